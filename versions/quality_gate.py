"""The quality gate: which new versions become live by themselves, and when to roll back.

A version the trainer publishes becomes live automatically only if

* every weight is finite (a NaN or an infinity would poison every prediction), and
* its window AUC is not worse than the live version's (as recorded when that one was published)
  by more than ``margin``.

Otherwise it is *held*: it is stored (head moves, so training and resuming go on from it) but
``live`` stays, the decision and its reason go into the version's meta, a counter and the log.

Rollback watches the model that is serving while the trainer's newest version is live: then
scorers follow the trainer's deltas, so the trainer's progressive window AUC is the served
model's quality. If it falls ``rollback_drop`` below the live version's AUC at publish, the live
pointer moves back to the newest earlier version kept, whose predictions are exactly what they
were; the next version that passes the gate against it makes the model follow again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streamrec.versions.meta import GateRecord, VersionMeta

HELD_NON_FINITE = "non_finite"
HELD_AUC_DROP = "auc_drop"


@dataclass(frozen=True)
class GateOptions:
    """The gate's settings (``--gate/--no-gate``, ``--gate-margin``, ``--rollback-drop``)."""

    enabled: bool = True
    margin: float = 0.02          # a candidate's window AUC may be this much below the live one's
    rollback_drop: float = 0.05   # the served window AUC this far below live's at publish: roll back
    # Fewer examples seen than this (candidate or live), and the window AUC is still the start-up
    # transient (before the first window of negatives closes): promote without judging.
    min_examples: int = 10_000


@dataclass(frozen=True)
class Decision:
    """Promote or hold a version, and why."""

    promote: bool
    reason: str              # "passed", "first", "no_auc", or a HELD_* value
    detail: str
    against: dict[str, Any] | None = None  # the live version judged against: {"version", "auc_window"}

    def as_record(self) -> GateRecord:
        return GateRecord(self.promote, self.reason, self.detail, self.against)


def _window_auc(meta: VersionMeta | None) -> float | None:
    value = None if meta is None else meta.auc_window
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def judge(candidate: VersionMeta, finite: bool, live: VersionMeta | None, options: GateOptions) -> Decision:
    """Promote or hold ``candidate`` (a version's meta) against ``live`` (the live version's meta)."""
    if not finite:
        return Decision(False, HELD_NON_FINITE, "a weight is NaN or infinite")
    if not options.enabled:
        return Decision(True, "passed", "gate disabled")
    if live is None:
        return Decision(True, "first", "no live version yet")
    new, old = _window_auc(candidate), _window_auc(live)
    if (new is None or old is None or candidate.examples_seen < options.min_examples
            or live.examples_seen < options.min_examples):
        return Decision(True, "no_auc", "window AUC not measurable yet")
    against = {"version": live.version, "auc_window": old}
    if new < old - options.margin:
        return Decision(False, HELD_AUC_DROP,
                        f"window AUC {new:.4f} is below live version {live.version}'s {old:.4f} "
                        f"by more than {options.margin}", against)
    return Decision(True, "passed", f"window AUC {new:.4f} vs live {old:.4f}", against)


def should_roll_back(served_auc_window: float, live: VersionMeta | None, options: GateOptions) -> str | None:
    """A reason to roll back if the served model's window AUC fell sharply, else None."""
    old = _window_auc(live)
    if (not options.enabled or live is None or old is None or not math.isfinite(served_auc_window)
            or live.examples_seen < options.min_examples):
        return None
    if served_auc_window < old - options.rollback_drop:
        return (f"window AUC fell to {served_auc_window:.4f}, {old - served_auc_window:.4f} below live version "
                f"{live.version}'s {old:.4f} at publish (rollback_drop {options.rollback_drop})")
    return None
