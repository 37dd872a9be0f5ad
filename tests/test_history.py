"""Users' click histories for sequence models: bounds, checkpoint round trip, featurising, DIN reading it."""

from __future__ import annotations

import numpy as np
import orjson
import torch

from consumers.history import UserHistory
from consumers.prequential import SpecOptions, evaluate_rows
from models import create_model, model_from_bytes, spec_for
from stream.features import Featurizer


def test_history_keeps_the_last_clicks_of_the_most_recent_users_and_round_trips():
    history = UserHistory(length=3, max_users=2)
    history.add_clicks(["a", "a", "b", "a", "a"], ["i1", "i2", "i3", "i4", "i5"], [1, 0, 1, 1, 1])
    assert history.of(["a", "b", "c"]) == [["i1", "i4", "i5"], ["i3"], []]
    history.add_clicks(["c"], ["i6"], [1])  # a third user: the least recently active (b) goes
    assert history.of(["a", "b", "c"]) == [["i1", "i4", "i5"], [], ["i6"]]
    history.add_clicks(["a"], ["i7"], [1])
    assert history.of(["a"]) == [["i4", "i5", "i7"]]
    again = UserHistory.from_state(orjson.loads(orjson.dumps(history.state())))
    assert again.of(["a", "c"]) == history.of(["a", "c"]) and len(again) == 2


def test_history_items_share_the_item_rows_and_din_attends_to_them(learnable_rows):
    rows = learnable_rows[:2000]
    spec = spec_for("din", SpecOptions().infer([r.features for r in rows[:500]]))
    assert spec.history_length == 20 and spec_for("wide_deep", spec) is spec
    featurizer = Featurizer(spec)
    items = [r.item_id for r in rows[:3]]
    batch = featurizer.build([r.user_id for r in rows[:3]], items, [r.features for r in rows[:3]],
                             histories=[items, [], items[:1]])
    assert batch.history.shape == (3, 20)
    assert batch.history[0, :3].tolist() == batch.ids[:, 1].tolist()  # the same rows as item_id
    assert batch.history[1].tolist() == [-1] * 20 and batch.history[2, 1:].tolist() == [-1] * 19
    model = create_model("din", spec)
    report, model = evaluate_rows(rows, "din", batch_size=200)
    assert report["examples"] == len(rows)
    users, features = [rows[0].user_id] * 2, [rows[0].features] * 2
    clicked = [r.item_id for r in rows if r.label][:10]
    with_history = featurizer.build(users, [items[0]] * 2, features, histories=[clicked, []])
    p = model.predict_proba(with_history)
    assert p[0] != p[1]  # the history changes the prediction
    before = with_history.history.clone()
    model.learn(featurizer.build(users, [items[0]] * 2, features, [1, 0], histories=[clicked, []]))
    assert torch.equal(with_history.history, before)
    loaded = model_from_bytes(model.to_bytes())
    assert loaded.spec.history_length == 20
    np.testing.assert_array_equal(loaded.predict_proba(with_history), model.predict_proba(with_history))
