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


def _learn_rows(learner: LearnerProcess, featurizer: Featurizer, rows: list, batch_size: int = 256) -> None:
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        learner.learn(featurizer.build([r.user_id for r in chunk], [r.item_id for r in chunk],
                                       [r.features for r in chunk], [r.label for r in chunk]))


@pytest.mark.parametrize("candidate_trained", [False, True])
def test_the_gate_holds_a_candidate_that_is_worse_on_the_same_examples_and_passes_a_better_one(
        learnable_rows: list, candidate_trained: bool) -> None:
    """A model trained on 6,000 examples against a fresh one, both predicting the next 4,000: the
    fresh one as the candidate is held, the trained one as the candidate goes live. The fresh one
    learns at a tenth of FTRL's rate: at the default rate, stepping after every example, a fresh
    `lr` catches up within 4,000 examples of this weak stream, and no gate could tell them apart."""
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.quality_gate import HELD_AUC_DROP, GateOptions, judge

    spec = spec_for("lr", SpecOptions().infer([r.features for r in learnable_rows[:200]]))
    featurizer = Featurizer(spec)
    trained_rows, judged_rows = learnable_rows[:6000], learnable_rows[6000:10_000]
    learners = {name: LearnerProcess() for name in ("trained", "fresh")}
    try:
        for name, learner in learners.items():
            learner.init("lr", spec.to_json(), seed=0, window=10_000,
                         settings={"ftrl.alpha": "0.005"} if name == "fresh" else None)
        _learn_rows(learners["trained"], featurizer, trained_rows)
        learners["trained"].request_snapshot()
        trained = learners["trained"].take_snapshot(block=True)
        learners["fresh"].request_snapshot()
        fresh = learners["fresh"].take_snapshot(block=True)
        # the candidate keeps learning; the reference is the other one, frozen
        candidate = learners["trained" if candidate_trained else "fresh"]
        candidate.set_reference(7, (fresh if candidate_trained else trained).weights, window=10_000)
        _learn_rows(candidate, featurizer, judged_rows)
        quality, _seconds = candidate.quality()
    finally:
        for learner in learners.values():
            learner.close()
    assert quality["paired_version"] == 7 and quality["paired_examples"] == len(judged_rows)
    decision = judge(VersionMeta(version=8, examples_seen=20_000, metrics=quality), True, VersionMeta(version=7),
                     GateOptions(min_examples=1000, min_paired=1000))
    if candidate_trained:
        assert decision.promote and decision.reason == "passed", decision
    else:
        assert not decision.promote and decision.reason == HELD_AUC_DROP, decision


def test_a_script_that_starts_a_learner_is_not_run_again_in_the_learner(tmp_path) -> None:
    """Spawn would re-run the parent's main script in the child; the learner's child must not
    (it would re-import everything the script imports, and run its top-level code)."""
    import subprocess
    import sys

    marker = tmp_path / "imports.txt"
    script = tmp_path / "starts_a_learner.py"
    script.write_text(
        "import sys\n"
        f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "from streamrec.consumers.learner import LearnerProcess\n"
        "if __name__ == '__main__':\n"
        "    learner = LearnerProcess()\n"
        "    try:\n"
        "        learner.init('lr', '{}', seed=0, window=10)\n"
        "        learner.quality()\n"
        "    except Exception:\n"
        "        pass\n"
        "    finally:\n"
        "        learner.close()\n"
        "    assert sys.modules['__main__'].__file__ == __file__\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.read_text().split() == ["__main__"]
