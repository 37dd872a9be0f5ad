"""A labelled example, the rows it travels as, and the :class:`ExampleSource` a trainer reads examples from."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

INF = math.inf


@dataclass(slots=True)
class Example:
    """One labelled impression, as the join releases it and the trainer learns it."""

    impression_id: str
    user_id: str
    item_id: str
    features: dict[str, Any]
    label: int
    event_time: float  # the impression's
    label_time: float = -INF  # when the label became known: the click, or the window's end


@dataclass
class JoinCounts:
    """What the join made of its events (the outcomes are exported as ``streamrec_join_outcomes_total``)."""

    impressions: int = 0
    clicks: int = 0
    positives: int = 0
    negatives: int = 0
    late_clicks: int = 0
    orphan_clicks: int = 0
    duplicate_clicks: int = 0
    duplicate_impressions: int = 0
    evicted: int = 0
    refused_times: int = 0  # events and watermarks dead-lettered for an implausible time


def encode_time(t: float) -> float | str:
    """JSON has no infinities: they are stored as strings."""
    return t if math.isfinite(t) else ("inf" if t > 0 else "-inf")


def example_row(e: Example) -> list[Any]:
    """An example as a JSON-able row (checkpoints, the examples topic)."""
    return [e.impression_id, e.user_id, e.item_id, e.features, e.label, e.event_time, encode_time(e.label_time)]


def example_from_row(row: list[Any]) -> Example:
    # rows written before examples carried their label time have six fields
    return Example(*row[:6], *(float(t) for t in row[6:]))


class ReleasedExamples:
    """Labelled examples waiting to be trained, in release order."""

    def __init__(self) -> None:
        self._ready: list[Example] = []

    def take(self, limit: int | None = None) -> list[Example]:
        """Labelled examples in the order they were released (at most ``limit``)."""
        if limit is None or limit >= len(self._ready):
            out, self._ready = self._ready, []
        else:
            out, self._ready = self._ready[:limit], self._ready[limit:]
        return out

    @property
    def ready(self) -> int:
        return len(self._ready)


class ExampleSource(Protocol):
    """Where a trainer's labelled examples come from: the in-process :class:`~streamrec.consumers.joiner.Joiner`
    (impressions + clicks) or the :class:`~streamrec.consumers.example_queue.ExampleQueue` (the join
    stage's ``<ns>.examples``). Its state goes into every version, so a version can be cut between
    any two batches."""

    kind: str           # "joiner" or "examples": which topics a version of it was trained from
    counts: JoinCounts

    def offer_message(self, partition: int, topic_kind: str | None,
                      raw: bytes) -> tuple[dict[str, int], list[tuple[bytes, str]]]:
        """Take one Kafka message: (events taken per type, [(bad event's bytes, reason), ...])."""
        ...

    def advance(self, partitions: Iterable[int] | None = None) -> None:
        """Release what event time allows on ``partitions`` (all if None)."""
        ...

    def take(self, limit: int | None = None) -> list[Example]: ...

    @property
    def ready(self) -> int: ...

    @property
    def open_impressions(self) -> int: ...

    def finished(self, partitions: Iterable[int]) -> bool:
        """Every partition in ``partitions`` has ended (its final watermark or marker was read)."""
        ...

    def watermark_time(self) -> float:
        """Event time up to which every label is known (-inf before any)."""
        ...

    def state(self) -> dict[str, Any]: ...
