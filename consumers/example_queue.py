"""What a trainer holds in place of a joiner when it reads ``<ns>.examples`` (``train --from-examples``).

The join stage (consumers/join_worker.py) has already labelled the examples; the trainer only
queues them between polls and batches, and knows which source partitions have ended. It offers
the joiner's interface, so the trainer's loop, versions and resume work unchanged: examples read
but not yet trained are part of its state, and so of every version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from streamrec.consumers.joiner import (
    Example,
    JoinCounts,
    ReleasedExamples,
    encode_time,
    example_from_row,
    example_row,
)

KIND = "examples"


class ExampleQueue(ReleasedExamples):
    def __init__(self) -> None:
        super().__init__()
        # join outcomes are counted where the join happens, by the join workers
        self.counts = JoinCounts()
        self._final: set[int] = set()
        self._label_time: dict[int, float] = {}  # newest label time read per source partition

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

    def state(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "ready": [example_row(e) for e in self._ready],
            "final": sorted(self._final),
            "label_time": {str(p): encode_time(t) for p, t in self._label_time.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExampleQueue:
        queue = cls()
        queue._ready = [example_from_row(row) for row in state["ready"]]
        queue._final = set(state["final"])
        queue._label_time = {int(p): float(t) for p, t in state["label_time"].items()}
        return queue
