"""The quality gate's decisions (pure)."""

from streamrec.versions.meta import VersionMeta
from streamrec.versions.quality_gate import (
    HELD_AUC_DROP,
    HELD_NON_FINITE,
    GateOptions,
    judge,
    should_roll_back,
)

OPTIONS = GateOptions(margin=0.02, rollback_drop=0.05, min_examples=1000)


def meta(version: int, auc_window: float | None, examples: int = 5000) -> VersionMeta:
    return VersionMeta(version=version, examples_seen=examples, metrics={"auc_window": auc_window})


def test_non_finite_weights_are_held_even_without_a_live_version():
    decision = judge(meta(1, 0.8), finite=False, live=None, options=OPTIONS)
    assert not decision.promote and decision.reason == HELD_NON_FINITE


def test_a_version_within_the_margin_goes_live_and_a_worse_one_is_held():
    live = meta(3, 0.75)
    assert judge(meta(4, 0.735), True, live, OPTIONS).promote
    held = judge(meta(4, 0.72), True, live, OPTIONS)
    assert not held.promote and held.reason == HELD_AUC_DROP and "0.7200" in held.detail and "0.7500" in held.detail


def test_no_judgement_before_enough_examples_or_without_auc():
    assert judge(meta(2, 0.5, examples=500), True, meta(1, 0.9), OPTIONS).reason == "no_auc"
    assert judge(meta(2, 0.5), True, meta(1, 0.9, examples=500), OPTIONS).reason == "no_auc"
    assert judge(meta(2, None), True, meta(1, 0.9), OPTIONS).reason == "no_auc"
    assert judge(meta(1, 0.6), True, None, OPTIONS).reason == "first"


def test_disabled_gate_still_refuses_nan():
    off = GateOptions(enabled=False)
    assert judge(meta(2, 0.1), True, meta(1, 0.9), off).promote
    assert not judge(meta(2, 0.9), False, meta(1, 0.9), off).promote


def test_rollback_only_on_a_sharp_fall():
    live = meta(5, 0.8)
    assert should_roll_back(0.77, live, OPTIONS) is None
    assert "fell to 0.7400" in should_roll_back(0.74, live, OPTIONS)
    assert should_roll_back(float("nan"), live, OPTIONS) is None
    assert should_roll_back(0.1, meta(5, 0.8, examples=10), OPTIONS) is None
