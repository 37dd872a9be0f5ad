"""Typed metadata of versions and deltas, as stored in Redis (JSON) and read by the trainer, the
quality gate, the scorer, ``streamrec models`` and the dashboard.

A field a version written by older code lacks takes its default, so old versions still load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinities or NaN: an unknown time or metric is stored as null."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class GateRecord:
    """The quality gate's decision on a version (versions/quality_gate.py)."""

    promoted: bool
    reason: str              # "passed", "first", "no_auc", or why it was held
    detail: str
    against: dict[str, Any] | None = None  # the paired evidence against the live version (quality_gate.py)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateRecord | None:
        if data is None:
            return None
        return cls(bool(data.get("promoted", True)), str(data.get("reason", "")), str(data.get("detail", "")),
                   data.get("against"))


@dataclass(frozen=True)
class VersionMeta:
    """What a version says about itself. ``model``, ``version``, ``parent`` and ``created_at`` are
    filled in by :meth:`streamrec.versions.store.VersionStore.publish`."""

    examples_seen: int = 0
    worker: str = ""
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    joiner_watermark: float | None = None   # every label before it is in the version
    event_time: float | None = None         # label time of the newest example trained
    ingested_at: float | None = None        # wall-clock time the trainer learned that example
    metrics: dict[str, float | None] = field(default_factory=dict)  # streaming quality at the cut
    counters: dict[str, int] = field(default_factory=dict)  # consumers/worker_counters.py
    join: dict[str, int] = field(default_factory=dict)      # join outcomes
    lineage: str | None = None              # the learner's delta sequence ...
    delta_seq: int = 0                      # ... and its last delta the version holds
    gate: GateRecord | None = None
    model: str = ""
    version: int = 0
    parent: int | None = None
    created_at: float = 0.0
    history_lost: bool = False              # the parent was missing: Redis came back empty
    shards: int = 0                         # ranks wrote the weights as this many shards (0: one blob)

    @property
    def auc(self) -> float | None:
        return self.metrics.get("auc")

    @property
    def auc_window(self) -> float | None:
        return self.metrics.get("auc_window")

    @property
    def promoted(self) -> bool:
        """Whether the version went live through the gate (versions from before the gate count as promoted)."""
        return self.gate is None or self.gate.promoted

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gate"] = None if self.gate is None else self.gate.as_dict()
        if not self.history_lost:
            del data["history_lost"]
        if not self.shards:
            del data["shards"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values["gate"] = GateRecord.from_dict(data.get("gate"))
        values["delta_seq"] = int(values.get("delta_seq") or 0)
        return cls(**values)


@dataclass(frozen=True)
class DeltaMeta:
    """What a delta says about itself (the rows and dense weights are in its safetensors)."""

    base_version: int | None = None  # the version the learner started from: deltas apply on top of it
    event_time: float | None = None
    ingested_at: float | None = None  # wall-clock time the newest example in it was learned
    watermark: float | None = None
    examples_seen: int = 0
    dense: bool = False             # carries the dense weights
    worker: str = ""
    model: str = ""
    lineage: str = ""
    seq: int = 0
    created_at: float = 0.0
    shards: int = 0                 # ranks wrote it as this many shards (0: one blob)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeltaMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})
