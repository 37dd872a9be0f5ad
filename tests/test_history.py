"""Users' click histories for sequence models: bounds, checkpoint round trip, featurising, DIN reading it."""

from __future__ import annotations

import numpy as np
import orjson
import torch

from streamrec.evaluation import evaluate_rows
from streamrec.models import create_model, model_from_bytes, spec_for
from streamrec.stream.behaviour_history import UserHistory
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer


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
    plain = spec_for("wide_deep", spec)
    assert spec.history_length == 20 and plain.history_length == 0 and spec_for("wide_deep", plain) is plain
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


def test_history_fields_travel_with_each_clicked_item_and_share_the_fields_rows(learnable_rows):
    import pytest

    from streamrec.stream.behaviour_history import BehaviourHistory
    from streamrec.stream.errors import ConfigError

    rows = learnable_rows[:1500]
    spec = spec_for("din", SpecOptions(history_fields=("C3",)).infer([r.features for r in rows[:500]]))
    assert spec.history_fields == ("C3",) and spec_for("wide_deep", spec).history_fields == ()
    history = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
    history.after(["u", "u", "v"], [rows[0].item_id, rows[1].item_id, rows[2].item_id], [1, 0, 1],
                  [rows[0].features, rows[1].features, rows[2].features])
    assert history.before(["u", "v"], ["", ""]) == [[[rows[0].item_id, rows[0].features["C3"]]],
                                                    [[rows[2].item_id, rows[2].features["C3"]]]]
    again = BehaviourHistory.from_state(orjson.loads(orjson.dumps(history.state())))
    assert again.fields == ("C3",) and again.before(["u"], [""]) == history.before(["u"], [""])
    featurizer = Featurizer(spec)
    entry = [rows[0].item_id, rows[0].features["C3"]]
    request_entry = {"item_id": rows[0].item_id, "C3": rows[0].features["C3"]}
    batch = featurizer.build([r.user_id for r in rows[:3]], [rows[0].item_id] * 3, [rows[0].features] * 3,
                             histories=[[entry], [request_entry], [rows[0].item_id]])
    c3 = spec.names.index("C3")
    assert batch.history.shape == (3, 20, 2)
    # the same rows as the candidate's item_id and C3 fields
    assert batch.history[0, 0].tolist() == [batch.ids[0, 1].item(), batch.ids[0, c3].item()]
    assert torch.equal(batch.history[1], batch.history[0])
    missing = featurizer.build(["x"], ["y"], [{**rows[0].features, "C3": None}])
    assert batch.history[2, 0, 1].item() == missing.ids[0, c3].item()  # a plain id: C3 missing
    assert (batch.history[:, 1:] == -1).all()
    report, model = evaluate_rows(rows, "din", batch_size=250, spec_options=SpecOptions(history_fields=("C3",)))
    assert report["examples"] == len(rows) and model.spec.history_fields == ("C3",)
    loaded = model_from_bytes(model.to_bytes())
    assert loaded.spec.history_fields == ("C3",)
    np.testing.assert_array_equal(loaded.predict_proba(batch), model.predict_proba(batch))
    for bad in ("C999", "I1", "item_id"):
        with pytest.raises(ConfigError, match="--history-field"):
            SpecOptions(history_fields=(bad,)).infer([r.features for r in rows[:50]])


def test_a_scoring_request_may_send_history_entries_with_their_fields():
    import pytest

    from streamrec.serving.scorer import BadRequest, parse_events

    _users, _items, _features, histories = parse_events(
        [{"user_id": "u", "item_id": "i", "history": [{"item_id": "a", "C3": "x"}, "b"]}])
    assert histories == [[{"item_id": "a", "C3": "x"}, "b"]]
    with pytest.raises(BadRequest, match="history"):
        parse_events([{"user_id": "u", "item_id": "i", "history": [1, 2]}])
