"""The learner process on its own: the pipe protocol, asynchronous init, errors reported."""

from __future__ import annotations

import pytest

from streamrec.consumers.learner import LearnerError, LearnerProcess
from streamrec.models import spec_for
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer


def _batch(featurizer: Featurizer, n: int = 64):
    users = [f"u{k % 7}" for k in range(n)]
    items = [f"i{k % 5}" for k in range(n)]
    features = [{"C3": f"c{k % 3}", "I1": k} for k in range(n)]
    return featurizer.build(users, items, features, [k % 2 for k in range(n)])


def test_init_does_not_wait_and_batches_queue_behind_it() -> None:
    spec = spec_for("wide_deep", SpecOptions().infer([{"C3": "a", "I1": 1}]))
    featurizer = Featurizer(spec)
    learner = LearnerProcess()
    try:
        learner.init("wide_deep", spec.to_json(), seed=0, window=100)
        assert learner.ready
        for _ in range(3):
            learner.learn(_batch(featurizer))
        quality, _seconds = learner.quality()  # answered after the init and every batch
        assert quality["examples"] == 3 * 64
    finally:
        learner.close()


def test_a_failed_init_is_raised_by_the_next_request_that_waits() -> None:
    spec = spec_for("wide_deep", SpecOptions().infer([{"C3": "a", "I1": 1}]))
    learner = LearnerProcess()
    try:
        learner.init("wide_deep", spec.to_json(), seed=0, window=100, settings={"no_such_key": "1"})
        learner.learn(_batch(Featurizer(spec)))
        with pytest.raises(LearnerError, match="no_such_key"):
            learner.quality()
    finally:
        learner.close()
