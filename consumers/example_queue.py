"""What a trainer holds in place of a joiner when it reads ``<ns>.examples`` (``train --from-examples``).

The join stage (consumers/join_worker.py) has already labelled the examples; the queue only
holds them between polls and batches, and knows which source partitions have ended. It is an
:class:`~streamrec.consumers.example_source.ExampleSource` like the joiner, so the trainer's
loop, versions and resume are the same: examples read but not yet trained are part of its state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from streamrec.consumers import example_messages
from streamrec.consumers.example_source import (
    Example,
    JoinCounts,
    ReleasedExamples,
    encode_time,
    example_from_row,
    example_row,
)
from streamrec.stream.feature_blocks import pack_features, unpack_features

KIND = "examples"


class ExampleQueue(ReleasedExamples):
    """Labelled examples read from ``<ns>.examples``, in order, until the trainer takes them."""

    kind = KIND

    def __init__(self) -> None:
        super().__init__()
        # join outcomes are counted where the join happens, by the join workers
        self.counts = JoinCounts()
        self._final: set[int] = set()
        self._label_time: dict[int, float] = {}  # newest label time read per source partition

    def offer_message(self, partition: int, topic_kind: str | None,
                      raw: bytes) -> tuple[dict[str, int], list[tuple[bytes, str]]]:
        """Queue one ``<ns>.examples`` message; anything else is one bad event with its reason.
        Events read are counted by the join workers, so none are reported taken here."""
        try:
            source_partition, examples, final = example_messages.decode(raw)
        except ValueError as exc:
            return {}, [(raw, str(exc))]
        self.add(source_partition, examples, final)
        return {}, []

    def add(self, partition: int, examples: list[Example], final: bool) -> None:
        if examples:
            self._ready.extend(examples)
            newest = max(e.label_time for e in examples)
            self._label_time[partition] = max(self._label_time.get(partition, -math.inf), newest)
        if final:
            self._final.add(partition)

    def advance(self, partitions: Iterable[int] | None = None) -> None:
        """Nothing to close: examples arrive labelled."""

    @property
    def open_impressions(self) -> int:
        return 0

    def finished(self, partitions: Iterable[int]) -> bool:
        return all(p in self._final for p in partitions)

    def watermark_time(self) -> float:
        """The slowest source partition's newest label time (-inf before any example)."""
        times = [math.inf if p in self._final else t for p, t in self._label_time.items()]
        times += [math.inf for p in self._final if p not in self._label_time]
        return min(times) if times else -math.inf

    def absorb(self, other: ExampleQueue, partitions: set[int] | None, lead: bool) -> None:
        """Take over ``other``'s source partitions in ``partitions`` (all if None); the ``lead``
        also takes its examples waiting to be trained (a trainer's ranks, re-dealt)."""
        self._final |= {p for p in other._final if partitions is None or p in partitions}
        self._label_time.update({p: t for p, t in other._label_time.items() if partitions is None or p in partitions})
        if lead:
            self._ready.extend(other.waiting())

    def empty_like(self) -> ExampleQueue:
        return ExampleQueue()

    def state(self) -> dict[str, Any]:
        ready = [example_row(e) for e in self.waiting()]
        packed, feature_rows = pack_features([row[3] for row in ready])
        for row, features in zip(ready, packed):
            row[3] = features
        return {
            "kind": KIND,
            "ready": ready,
            "feature_rows": feature_rows,
            "final": sorted(self._final),
            "label_time": {str(p): encode_time(t) for p, t in self._label_time.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExampleQueue:
        queue = cls()
        rows = state["ready"]
        for row, features in zip(rows, unpack_features([row[3] for row in rows], state.get("feature_rows"))):
            row[3] = features
        queue._ready, queue._head = [example_from_row(row) for row in rows], 0
        queue._final = set(state["final"])
        queue._label_time = {int(p): float(t) for p, t in state["label_time"].items()}
        return queue
