"""The Scorer against a real Redis: following the live pointer (pub/sub and polling), deltas,
gaps, pins and the champion pointer. Versions are written with the real VersionStore."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import redis

from streamrec.evaluation import batched
from streamrec.models import create_model
from streamrec.serving.scorer import NotReady, Scorer, predict_offline
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.versions.meta import DeltaMeta, VersionMeta
from streamrec.versions.store import VersionStore, set_champion
from tests.streams import wait_for

pytestmark = pytest.mark.integration


_wait_for = functools.partial(wait_for, timeout_s=5.0, every_s=0.02)


@pytest.fixture
def setup(learnable_rows):
    rows = learnable_rows[:3000]
    spec = SpecOptions().infer([r.features for r in rows[:500]])
    featurizer = Featurizer(spec)
    batches = [featurizer.build([r.user_id for r in c], [r.item_id for r in c], [r.features for r in c],
                                [r.label for r in c]) for c in batched(rows, 300)]
    probe_rows = rows[:64]
    probe = ([r.user_id for r in probe_rows], [r.item_id for r in probe_rows], [r.features for r in probe_rows])
    events = [{"user_id": u, "item_id": i, "features": f} for u, i, f in zip(*probe)]
    return spec, batches, probe, events


def _publish(store: VersionStore, model, parent, lineage="L", delta_seq=0, **meta) -> int:
    return store.publish(parent=parent, meta=VersionMeta(examples_seen=1, lineage=lineage, delta_seq=delta_seq,
                                                         event_time=100.0, **meta),
                         weights=model.to_bytes(), quality_state=b"", source_state=b"{}", keep=10)


def _predict(model, probe) -> np.ndarray:
    return model.predict_proba(Featurizer(model.spec).build(*probe))


def test_scorer_follows_announcements_polls_as_fallback_and_honours_pins(stack, namespace, setup):
    spec, batches, probe, events = setup
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "lr")
    first, second = create_model("lr", spec), create_model("lr", spec)
    first.learn(batches[0])
    for batch in batches[1:4]:
        second.learn(batch)
    with Scorer(stack.redis_url, namespace, "lr", poll_s=30) as slow_poll:
        with pytest.raises(NotReady):
            slow_poll.predict(events)
        v1 = _publish(store, first, None)
        _wait_for(lambda: slow_poll.served is not None)  # an announcement, not the 30 s poll
        np.testing.assert_array_equal(slow_poll.predict(events).probabilities, _predict(first, probe))
        v2 = _publish(store, second, v1, lineage="M")
        _wait_for(lambda: slow_poll.served.version == v2)
        answer = slow_poll.predict(events)
        assert answer.served.version == v2
        np.testing.assert_array_equal(answer.probabilities, _predict(second, probe))
        store.set_live(v1, pin=True)  # a rollback by hand: announced
        _wait_for(lambda: slow_poll.served.version == v1)
        np.testing.assert_array_equal(slow_poll.predict(events).probabilities, _predict(first, probe))

        with Scorer(stack.redis_url, namespace, "lr", poll_s=0.1) as fast_poll:
            assert fast_poll.served.version == v1
            client.set(store.keys.live, v2)  # moved without an announcement: only polling sees it
            _wait_for(lambda: fast_poll.served.version == v2)
            time.sleep(0.5)
            assert slow_poll.served.version == v1


@pytest.mark.parametrize("keyed", [False, True], ids=["hashed", "keyed"])
def test_deltas_apply_in_order_and_a_gap_falls_back_to_the_full_version(stack, namespace, setup, learnable_rows,
                                                                        keyed):
    spec, batches, probe, events = setup
    settings = {}
    if keyed:  # keyed tables under a budget that evicts on every batch: deltas carry the evictions
        rows = learnable_rows[:3000]
        spec = SpecOptions(keyed=True).infer([r.features for r in rows[:500]])
        featurizer = Featurizer(spec)
        batches = [featurizer.build([r.user_id for r in c], [r.item_id for r in c], [r.features for r in c],
                                    [r.label for r in c]) for c in batched(rows, 300)]
        settings = {"tables.max_rows": "1024"}
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "wide_deep")
    trainer_model = create_model("wide_deep", spec, settings=settings)
    trainer_model.learn(batches[0])
    trainer_model.delta_bytes(include_dense=True)  # the version below holds everything so far
    v1 = _publish(store, trainer_model, None, lineage="L", delta_seq=0)
    at_v1 = _predict(trainer_model, probe)

    def delta(seq: int, publish: bool = True) -> None:
        trainer_model.learn(batches[seq])
        blob = trainer_model.delta_bytes(include_dense=True)
        if publish:
            store.publish_delta(DeltaMeta(lineage="L", seq=seq, event_time=100.0 + seq,
                                          ingested_at=time.time()), weights=blob, ttl_s=60)

    swaps = []
    with Scorer(stack.redis_url, namespace, "wide_deep", poll_s=0.1, on_swap=swaps.append) as scorer:
        assert scorer.served.version == v1 and scorer.served.deltas_applied == 0
        delta(1)
        delta(2)
        _wait_for(lambda: scorer.served.delta_seq == 2)
        answer = scorer.predict(events)
        assert (answer.served.version, answer.served.deltas_applied, answer.served.event_time) == (v1, 2, 102.0)
        np.testing.assert_array_equal(answer.probabilities, _predict(trainer_model, probe))
        np.testing.assert_array_equal(predict_offline(store, answer.served, *probe), answer.probabilities)
        assert scorer.model_age_seconds() > 0

        delta(3, publish=False)  # lost: the scorer must not apply 4 on top of 2
        delta(4)
        _wait_for(lambda: scorer.gaps == 1)
        time.sleep(0.3)
        answer = scorer.predict(events)
        assert (answer.served.version, answer.served.deltas_applied) == (v1, 0)
        np.testing.assert_array_equal(answer.probabilities, at_v1)
        assert scorer.gaps == 1  # counted once, then it waits for a version

        v2 = _publish(store, trainer_model, v1, lineage="L", delta_seq=4)
        delta(5)
        _wait_for(lambda: scorer.served.version == v2 and scorer.served.delta_seq == 5)
        np.testing.assert_array_equal(scorer.predict(events).probabilities, _predict(trainer_model, probe))

        store.set_live(v2, pin=True)  # pinned: exactly the version, no deltas
        _wait_for(lambda: scorer.served.deltas_applied == 0)
        np.testing.assert_array_equal(scorer.predict(events).probabilities,
                                      predict_offline(store, {"version": v2}, *probe))
    assert [s.version for s in swaps][:1] == [v1]
    if keyed:
        assert trainer_model.keyed_tables()["embedding"].evicted > 0


def test_a_version_of_the_lineage_it_follows_is_rebased_not_reloaded(stack, namespace, setup):
    """A version cut at delta 2 arriving while the scorer holds deltas 1-3 of the same lineage is
    served by rebasing (the rows are already version + delta 3), with the trainer's predictions."""
    spec, batches, probe, events = setup
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "wide_deep")
    trainer_model = create_model("wide_deep", spec)
    trainer_model.learn(batches[0])
    trainer_model.delta_bytes(include_dense=True)
    v1 = _publish(store, trainer_model, None, lineage="R", delta_seq=0)
    with Scorer(stack.redis_url, namespace, "wide_deep", poll_s=0.1) as scorer:
        cut = None
        for seq in (1, 2, 3):
            trainer_model.learn(batches[seq])
            blob = trainer_model.delta_bytes(include_dense=True)
            if seq == 2:
                cut = trainer_model.to_bytes()  # the version the trainer cuts at delta 2
            store.publish_delta(DeltaMeta(lineage="R", seq=seq, event_time=100.0 + seq, ingested_at=time.time()),
                                weights=blob, ttl_s=60)
        _wait_for(lambda: scorer.served.delta_seq == 3)
        v2 = store.publish(parent=v1, meta=VersionMeta(examples_seen=3, lineage="R", delta_seq=2, event_time=102.0),
                           weights=cut, quality_state=b"", source_state=b"{}", keep=10)
        _wait_for(lambda: scorer.served.version == v2)
        assert scorer.swaps["rebase"] == 1 and scorer.swaps["full"] == 1, scorer.swaps
        answer = scorer.predict(events)
        assert (answer.served.version, answer.served.deltas_applied) == (v2, 1)
        np.testing.assert_array_equal(answer.probabilities, _predict(trainer_model, probe))


def test_a_scorer_without_a_model_serves_the_champion(stack, namespace, setup):
    spec, batches, probe, events = setup
    client = redis.Redis.from_url(stack.redis_url)
    lr, wide_deep = create_model("lr", spec), create_model("wide_deep", spec)
    lr.learn(batches[0])
    wide_deep.learn(batches[0])
    _publish(VersionStore(client, namespace, "lr"), lr, None)
    _publish(VersionStore(client, namespace, "wide_deep"), wide_deep, None)
    with Scorer(stack.redis_url, namespace, None, poll_s=30) as scorer:
        assert scorer.served is None  # no champion named yet
        set_champion(client, namespace, "lr")
        _wait_for(lambda: scorer.served is not None and scorer.served.model == "lr")
        np.testing.assert_array_equal(scorer.predict(events).probabilities, _predict(lr, probe))
        set_champion(client, namespace, "wide_deep")
        _wait_for(lambda: scorer.served.model == "wide_deep")
        np.testing.assert_array_equal(scorer.predict(events).probabilities, _predict(wide_deep, probe))


def test_an_item_based_model_is_served_with_its_versions_item_interactions(stack, namespace, learnable_rows):
    """autorec reads each item's interactions, which only the trainer sees: the scorer serves them
    from the version's checkpoint, exactly as predict_offline rebuilds them."""
    import orjson

    from streamrec.models import model_from_bytes
    from streamrec.stream.behaviour_history import BehaviourHistory
    from tests.streams import replay_rows, settings_for, start_trainer

    rows = learnable_rows[:3000]
    settings = settings_for(namespace)
    replay_rows(stack, settings, rows, "ar")
    running = start_trainer(stack, settings, model="autorec", publish_every_examples=1000)
    try:
        running.wait()
    finally:
        running.stop()
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "autorec")
    live = store.live()
    popular = max({r.item_id for r in rows}, key=lambda i: sum(r.item_id == i for r in rows))
    events = [{"user_id": r.user_id, "item_id": popular, "features": r.features} for r in rows[:8]]
    columns = ([e["user_id"] for e in events], [e["item_id"] for e in events], [e["features"] for e in events])
    with Scorer(stack.redis_url, namespace, "autorec", poll_s=0.1) as scorer:
        _wait_for(lambda: scorer.served is not None and scorer.served.version == live)
        answer = scorer.predict(events)
    model = model_from_bytes(store.load(live, with_state=False).weights)
    interactions = BehaviourHistory.from_state(orjson.loads(store.history(live)))
    assert len(interactions.before([""], [popular])[0]) == 50  # the item's last 50 impressions
    featurizer = Featurizer(model.spec)
    expected = model.predict_proba(featurizer.build(*map(list, columns),
                                                    histories=interactions.before(columns[0], columns[1])))
    np.testing.assert_array_equal(answer.probabilities, expected)
    np.testing.assert_array_equal(answer.probabilities, predict_offline(store, answer.served, *columns))
    blind = model.predict_proba(featurizer.build(*map(list, columns)))  # what an empty history would give
    assert not np.allclose(answer.probabilities, blind)
    store.client.close()
