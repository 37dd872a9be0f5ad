"""What a worker has read and produced, checkpointed with its state so restarts count nothing twice.

A trainer keeps one set in every version; a join worker keeps one per source partition in that
partition's checkpoint (consumers/join_worker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

MASK64 = (1 << 64) - 1
# event type -> the counter of such events read
_READ = {"impression": "impressions_read", "click": "clicks_read", "watermark": "watermarks_read"}


def example_digest(impression_ids: list[str], labels: list[int]) -> int:
    """The digest contribution of some examples: sum mod 2^64 of xxh64("impression_id|label"),
    order-free and counting repeats. Trainers and join workers keep it to prove exactly once."""
    total = 0
    for impression_id, label in zip(impression_ids, labels):
        total += xxhash.xxh64_intdigest(f"{impression_id}|{label}".encode())
    return total & MASK64



@dataclass
class Counters:
    """Events read, dead letters, examples, positives and the examples' digest: checkpointed with the
    worker's state."""

    impressions_read: int = 0
    clicks_read: int = 0
    watermarks_read: int = 0
    dead_letters: int = 0
    examples: int = 0
    positives: int = 0
    digest: int = 0  # sum mod 2^64 of xxh64("impression_id|label") over the examples

    def count_read(self, event_type: str, n: int = 1) -> None:
        field = _READ[event_type]
        setattr(self, field, getattr(self, field) + n)

    def count_examples(self, impression_ids: list[str], labels: list[int]) -> None:
        self.examples += len(labels)
        self.positives += sum(labels)
        self.digest = (self.digest + example_digest(impression_ids, labels)) & MASK64
