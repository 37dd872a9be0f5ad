"""The quality gate: which new versions become live by themselves, and when to roll back.

It judges like a careful person comparing two models: on the same examples. While the trainer
learns, a frozen copy of the live version predicts every example the learning model predicts
(before it learns from it), and the last examples of both form a paired window
(stream/paired_window.py; its summary is in every version's metrics as ``paired_*``). A version
the trainer publishes becomes live automatically only if

* every weight is finite (a NaN or an infinity would poison every prediction), and
* on the paired window it is not worse than the live version: worse means its AUC there is more
  than ``margin`` below the live version's *and* its mean per-example log-loss is worse by more
  than ``z`` standard errors (an effect that is both material and unlikely to be noise).

Otherwise it is *held*: it is stored (head moves, so training and resuming go on from it) but
``live`` stays, the decision and its reason go into the version's meta, a counter and the log. A
held streak ends by itself when the evidence turns: the live version is frozen, so once the
stream changes (a new regime makes every old model worse), the learning model overtakes it on the
same examples and the next version goes live. Without enough paired examples yet
(``min_paired``) a version goes live only if scorers already serve it (they follow the trainer's
deltas on top of the live version); otherwise it waits for the evidence (reason ``pending``).

While scorers follow the trainer (each version goes live, its deltas applied on top), the frozen
copy stays on one promoted version until the two have been compared on ``min_paired`` examples,
then moves to the newest live version: frequent versions do not keep the evidence from
accumulating.

Rollback: while scorers follow the trainer's deltas, the served model is the learning model; if
it becomes worse than the frozen version on the same examples by ``rollback_drop`` (and
significantly), the trainer cuts a version at once, the gate holds it, and the live pointer moves
to the frozen version (proven better on those examples), which scorers serve exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streamrec.versions.meta import GateRecord, VersionMeta

HELD_NON_FINITE = "non_finite"
HELD_AUC_DROP = "auc_drop"
HELD_PENDING = "pending"


@dataclass(frozen=True)
class GateOptions:
    """The gate's settings (``--gate/--no-gate``, ``--gate-margin``, ``--rollback-drop``)."""

    enabled: bool = True
    margin: float = 0.02          # paired AUC this far below the live version's (and significant): hold
    rollback_drop: float = 0.05   # the served model this far below the frozen live version: roll back
    # Fewer examples seen than this, and the metrics are still the start-up transient (before the
    # first window of negatives closes): promote without judging.
    min_examples: int = 10_000
    min_paired: int = 2_000       # examples both models predicted before a comparison counts
    z: float = 3.0                # standard errors of the paired log-loss difference that count as real


@dataclass(frozen=True)
class PairedEvidence:
    """The learning model against the live version on the same recent examples."""

    reference_version: int
    examples: int
    auc: float
    reference_auc: float
    logloss_gain: float      # mean per-example log-loss of the live version minus the candidate's
    logloss_gain_se: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> PairedEvidence | None:
        version, examples = metrics.get("paired_version"), metrics.get("paired_examples")
        if not isinstance(version, (int, float)) or not math.isfinite(version) or not examples:
            return None
        def value(key: str) -> float:
            v = metrics.get(key)
            return float(v) if isinstance(v, (int, float)) else math.nan
        return cls(int(version), int(examples), value("paired_auc"), value("paired_reference_auc"),
                   value("paired_logloss_gain"), value("paired_logloss_gain_se"))

    def worse_by(self, threshold: float, z: float) -> bool:
        """Materially (AUC ``threshold`` lower) and significantly (log-loss ``z`` errors worse) worse."""
        if not all(math.isfinite(x) for x in (self.auc, self.reference_auc, self.logloss_gain)):
            return False
        significant = self.logloss_gain < -z * (self.logloss_gain_se if math.isfinite(self.logloss_gain_se) else 0.0)
        return self.reference_auc - self.auc > threshold and significant

    def describe(self) -> str:
        return (f"on the same {self.examples:,} examples: AUC {self.auc:.4f} vs version "
                f"{self.reference_version}'s {self.reference_auc:.4f}, log-loss gain "
                f"{self.logloss_gain:+.4f} (standard error {self.logloss_gain_se:.4f})")

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.reference_version, "examples": self.examples, "auc": self.auc,
                "reference_auc": self.reference_auc, "logloss_gain": self.logloss_gain,
                "logloss_gain_se": self.logloss_gain_se}


@dataclass(frozen=True)
class Decision:
    """Promote or hold a version, and why."""

    promote: bool
    reason: str              # "passed", "first", "no_auc", "following", or a HELD_* value
    detail: str
    against: dict[str, Any] | None = None  # the paired evidence against the live version

    def as_record(self) -> GateRecord:
        return GateRecord(self.promote, self.reason, self.detail, self.against)


def judge(candidate: VersionMeta, finite: bool, live: VersionMeta | None, options: GateOptions,
          following: bool = False) -> Decision:
    """Promote or hold ``candidate`` (a version's meta, its paired evidence in its metrics) against
    ``live`` (the live version's meta). ``following``: scorers serve the trainer's newest version
    with its deltas, so the candidate is what they already serve."""
    if not finite:
        return Decision(False, HELD_NON_FINITE, "a weight is NaN or infinite")
    if not options.enabled:
        return Decision(True, "passed", "gate disabled")
    if live is None:
        return Decision(True, "first", "no live version yet")
    if candidate.examples_seen < options.min_examples:
        return Decision(True, "no_auc", "too few examples to judge yet")
    evidence = PairedEvidence.from_metrics(candidate.metrics)
    # While scorers follow the trainer, the frozen copy may be an earlier promoted version of the
    # lineage they have followed since (it moves on once it has been compared on enough examples).
    comparable = evidence is not None and (evidence.reference_version == live.version or following)
    if evidence is None or not comparable or evidence.examples < options.min_paired:
        seen = evidence.examples if evidence is not None and comparable else 0
        if following:
            return Decision(True, "following", f"scorers already serve it with the deltas; compared with live "
                                               f"version {live.version} on {seen:,} examples so far")
        return Decision(False, HELD_PENDING, f"compared with live version {live.version} on {seen:,} examples; "
                                             f"{options.min_paired:,} are needed")
    if evidence.worse_by(options.margin, options.z):
        return Decision(False, HELD_AUC_DROP, f"worse {evidence.describe()}", evidence.as_dict())
    return Decision(True, "passed", evidence.describe(), evidence.as_dict())


def should_roll_back(served_metrics: dict[str, Any], live: VersionMeta | None, options: GateOptions) -> str | None:
    """A reason to roll back if the served model (the learning model, while scorers follow its
    deltas) is clearly worse than the frozen version it is compared with on the same examples (the
    live version or an earlier one of the lineage followed since), else None."""
    evidence = PairedEvidence.from_metrics(served_metrics)
    if (not options.enabled or live is None or evidence is None or evidence.reference_version > live.version
            or evidence.examples < options.min_paired):
        return None
    if evidence.worse_by(options.rollback_drop, options.z):
        return f"the served model fell behind {evidence.describe()}"
    return None
