"""The quality gate's decisions (pure) and the paired window they rest on."""

import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from streamrec.stream.paired_window import PairedWindow, no_reference
from streamrec.versions.meta import VersionMeta
from streamrec.versions.quality_gate import (
    HELD_AUC_DROP,
    HELD_NON_FINITE,
    HELD_PENDING,
    GateOptions,
    judge,
    should_roll_back,
)

OPTIONS = GateOptions(margin=0.02, rollback_drop=0.05, min_examples=1000, min_paired=500, z=3.0)


def paired(version: int, auc: float, reference_auc: float, gain: float, se: float = 0.001,
           examples: int = 5000) -> dict[str, float]:
    return {"paired_version": version, "paired_examples": examples, "paired_auc": auc,
            "paired_reference_auc": reference_auc, "paired_logloss_gain": gain, "paired_logloss_gain_se": se}


def meta(version: int, examples: int = 5000, **metrics: float) -> VersionMeta:
    return VersionMeta(version=version, examples_seen=examples, metrics=metrics)


def test_non_finite_weights_are_held_even_without_a_live_version():
    decision = judge(meta(1), finite=False, live=None, options=OPTIONS)
    assert not decision.promote and decision.reason == HELD_NON_FINITE


def test_a_candidate_worse_on_the_same_examples_is_held_and_a_better_one_goes_live():
    live = meta(3)
    worse = judge(meta(4, **paired(3, 0.70, 0.75, gain=-0.02)), True, live, OPTIONS)
    assert not worse.promote and worse.reason == HELD_AUC_DROP
    assert "0.7000" in worse.detail and "0.7500" in worse.detail and worse.against["version"] == 3
    better = judge(meta(4, **paired(3, 0.76, 0.75, gain=0.01)), True, live, OPTIONS)
    assert better.promote and better.reason == "passed"


def test_a_small_or_noisy_difference_is_not_a_reason_to_hold():
    live = meta(3)
    # within the margin
    assert judge(meta(4, **paired(3, 0.74, 0.75, gain=-0.01)), True, live, OPTIONS).promote
    # beyond the margin but the log-loss difference is within noise
    assert judge(meta(4, **paired(3, 0.70, 0.75, gain=-0.002, se=0.001)), True, live, OPTIONS).promote


def test_the_stuck_case_a_live_version_with_a_lucky_old_number_does_not_freeze_serving():
    # The live version once measured 0.88 on its own window; the stream changed since. On the same
    # recent examples the candidate beats it, so it goes live (the old rule compared 0.50 with 0.88).
    live = meta(24, auc_window=0.8804)
    candidate = meta(31, auc_window=0.5010, **paired(24, 0.61, 0.52, gain=0.03))
    assert judge(candidate, True, live, OPTIONS).promote


def test_without_enough_paired_evidence_only_what_scorers_already_serve_goes_live():
    live = meta(3)
    few = meta(4, **paired(3, 0.5, 0.9, gain=-0.5, examples=100))
    assert judge(few, True, live, OPTIONS, following=True).reason == "following"
    held = judge(few, True, live, OPTIONS, following=False)
    assert not held.promote and held.reason == HELD_PENDING and "100 examples" in held.detail
    # evidence against another version than the live one does not count
    other = meta(4, **paired(2, 0.5, 0.9, gain=-0.5))
    assert judge(other, True, live, OPTIONS).reason == HELD_PENDING


def test_start_up_and_first_version_and_disabled_gate():
    assert judge(meta(2, examples=500), True, meta(1), OPTIONS).reason == "no_auc"
    assert judge(meta(1), True, None, OPTIONS).reason == "first"
    off = GateOptions(enabled=False)
    assert judge(meta(2, **paired(1, 0.1, 0.9, gain=-1)), True, meta(1), off).promote
    assert not judge(meta(2), False, meta(1), off).promote


def test_rollback_only_when_the_served_model_is_clearly_behind_the_frozen_live_version():
    live = meta(5)
    assert should_roll_back(paired(5, 0.77, 0.80, gain=-0.01), live, OPTIONS) is None  # within rollback_drop
    reason = should_roll_back(paired(5, 0.70, 0.80, gain=-0.05), live, OPTIONS)
    assert reason is not None and "0.7000" in reason
    # against an earlier version of the lineage scorers followed since: counts; a newer one cannot be
    assert should_roll_back(paired(4, 0.70, 0.80, gain=-0.05), live, OPTIONS) is not None
    assert should_roll_back(paired(6, 0.70, 0.80, gain=-0.05), live, OPTIONS) is None
    assert should_roll_back(paired(5, 0.70, 0.80, gain=-0.05, examples=10), live, OPTIONS) is None
    assert should_roll_back(no_reference(), live, OPTIONS) is None


def test_the_paired_window_matches_sklearn_on_its_last_examples():
    rng = np.random.default_rng(0)
    window = PairedWindow(reference_version=7, size=1000)
    labels = (rng.random(2500) < 0.3).astype(np.float32)
    good = np.clip(0.3 + 0.4 * (labels - 0.3) + rng.normal(0, 0.15, 2500), 0.01, 0.99).astype(np.float32)
    noise = rng.random(2500).astype(np.float32)
    for start in range(0, 2500, 300):  # batches that wrap around the ring
        window.update(good[start:start + 300], noise[start:start + 300], labels[start:start + 300])
    summary = window.summary()
    y, c, r = labels[-1000:], good[-1000:], noise[-1000:]
    assert summary["paired_version"] == 7 and summary["paired_examples"] == 1000
    assert math.isclose(summary["paired_auc"], roc_auc_score(y, c), rel_tol=1e-9)
    assert math.isclose(summary["paired_reference_auc"], roc_auc_score(y, r), rel_tol=1e-9)
    expected_gain = log_loss(y, r) - log_loss(y, c)
    assert math.isclose(summary["paired_logloss_gain"], expected_gain, rel_tol=1e-4)
    assert summary["paired_logloss_gain_se"] > 0
