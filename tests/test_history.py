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


def test_history_forgets_keys_with_no_entry_within_the_ttl_of_event_time():
    import pytest

    from streamrec.stream.errors import ConfigError

    history = UserHistory(length=3, ttl_seconds=10)
    history.add(["a", "b"], ["i1", "i2"], [0.0, 1.0], newest=1.0)
    history.add(["a"], ["i3"], [9.0], newest=11.5)  # b's newest entry (1.0) is now more than 10 s old
    assert history.of(["a", "b"]) == [["i1", "i3"], []] and history.expired == 1
    history.add([], [], [], newest=5.0)  # a late batch does not turn the clock back
    assert history.clock == 11.5 and len(history) == 1
    middle = orjson.loads(orjson.dumps(history.state()))
    history.add(["c"], ["i4"], [12.0], newest=19.5)  # a's newest (9.0) goes; c stays
    assert history.of(["a", "c"]) == [[], ["i4"]] and history.expired == 2
    # a round trip through the state goes on identically
    again = UserHistory.from_state(middle)
    again.add(["c"], ["i4"], [12.0], newest=19.5)
    assert again.state() == history.state()
    # no ttl: nothing expires, and the state is what it always was
    plain = UserHistory(length=3)
    plain.add(["a"], ["i1"])
    assert set(plain.state()) == {"length", "max_users", "users"}
    with pytest.raises(ConfigError, match="tables.ttl_seconds"):
        history.add(["a"], ["i5"])  # no times
    with pytest.raises(ConfigError, match="tables.ttl_seconds"):
        history.add(["a"], ["i5"], [float("nan")], newest=20.0)
    with pytest.raises(ConfigError, match="tables.ttl_seconds"):
        UserHistory(length=3, ttl_seconds=-1)
    forged = {**middle, "times": middle["times"][:-1] + [1.0, 2.0]}
    with pytest.raises(ConfigError, match="times"):
        UserHistory.from_state(forged)


def test_an_expired_keys_encoded_rows_go_with_it_and_evaluate_reports_the_history(learnable_rows):
    from streamrec.stream.behaviour_history import BehaviourHistory

    history = BehaviourHistory("user_clicks", 4, ttl_seconds=10)
    history.attach_encoder(lambda entries: np.array([[len(str(e))] for e in entries], dtype=np.int64))
    history.after(["u", "v"], ["item", "it"], [1, 1], times=[0.0, 8.0])
    assert history.rows_before_learning(["u"], ["x"], [0])[0, :, 0].tolist() == [4, -1, -1, -1]
    history.after(["w"], ["x"], [0], times=[15.0])  # not clicked, but the clock moves: u's entry is too old
    assert history.rows_before_learning(["u", "v"], ["x", "x"], [0, 0])[:, 0, 0].tolist() == [-1, 2]
    assert history.summary() == {"keys": 1, "expired": 1, "ttl_seconds": 10.0}
    # v is shown an item at 20 s and does not click: still active, so its click at 8 s stays
    history.after(["v"], ["y"], [0], times=[20.0])
    history.after(["z"], ["y"], [0], times=[25.0])
    assert history.rows_before_learning(["v"], ["x"], [0])[0, 0, 0] == 2 and history.store.expired == 1

    rows = learnable_rows[:3000]  # 30 s of event time
    plain, _ = evaluate_rows(rows, "din", batch_size=200)
    timed, _ = evaluate_rows(rows, "din", batch_size=200, model_settings={"tables.ttl_seconds": "5"})
    assert plain["history"]["expired"] == 0 and timed["history"]["expired"] > 0
    assert timed["history"]["keys"] < plain["history"]["keys"] == len({r.user_id for r in rows if r.label})
    assert 0.5 < timed["auc"] <= 1.0
