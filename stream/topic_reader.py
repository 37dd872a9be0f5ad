"""Read a replayed stream back: every record of some topics up to each partition's final watermark."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import orjson

from streamrec.stream.errors import StackError
from streamrec.stream.kafka_client import EventConsumer, Record


def records_until_final_watermarks(consumer: EventConsumer, topics: Sequence[str], partitions: int,
                                   timeout_s: float = 120.0) -> Iterator[Record]:
    """Assign every partition of ``topics`` from the start and yield its records (watermarks excluded)
    until a final watermark has been seen on each; raise :class:`StackError` after ``timeout_s``."""
    waiting = {(t, p) for t in topics for p in range(partitions)}
    consumer.assign(sorted(waiting))
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise StackError(f"no end-of-replay watermark on {sorted(waiting)} within {timeout_s}s")
        for record in consumer.poll(10_000, 0.5):
            # Cheap byte test first; decode only the candidates to be sure.
            if b'"watermark"' in record.value:
                event = orjson.loads(record.value)
                if isinstance(event, dict) and event.get("type") == "watermark":
                    if event.get("final"):
                        waiting.discard((record.topic, record.partition))
                    continue
            yield record
