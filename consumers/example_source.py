"""A labelled example, the rows it travels as, and the :class:`ExampleSource` a trainer reads examples from."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from streamrec.stream.feature_blocks import RowRef, feature_dicts

INF = math.inf


@dataclass(slots=True)
class Example:
    """One labelled impression, as the join releases it and the trainer learns it."""

    impression_id: str
    user_id: str
    item_id: str
    features: dict[str, Any] | RowRef  # a reference into a columnar batch's features (stream/feature_blocks.py)
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
    """An example as a row (its features as they are: a dict, or a reference)."""
    return [e.impression_id, e.user_id, e.item_id, e.features, e.label, e.event_time, encode_time(e.label_time)]


def example_rows(examples: list[Example]) -> list[list[Any]]:
    """Examples as JSON-able rows (checkpoints, the examples topic): references become dicts."""
    rows = [example_row(e) for e in examples]
    for row, features in zip(rows, feature_dicts([e.features for e in examples])):
        row[3] = features
    return rows


def example_from_row(row: list[Any]) -> Example:
    # rows written before examples carried their label time have six fields
    return Example(*row[:6], *(float(t) for t in row[6:]))


class ReleasedExamples:
    """Labelled examples waiting to be trained, in release order."""

    def __init__(self) -> None:
        self._ready: list[Example] = []
        self._head = 0  # examples before it are taken: a take costs its own length, not the queue's

    def take(self, limit: int | None = None) -> list[Example]:
        """Labelled examples in the order they were released (at most ``limit``)."""
        start = self._head
        end = len(self._ready) if limit is None else min(len(self._ready), start + limit)
        out = self._ready[start:end]
        self._head = end
        if end == len(self._ready):
            self._ready, self._head = [], 0
        elif end > 4096 and 2 * end > len(self._ready):
            del self._ready[:end]
            self._head = 0
        return out

    def peek(self, limit: int) -> list[Example]:
        """The next ``limit`` examples :meth:`take` would give, left in place."""
        return self._ready[self._head:self._head + limit]

    def waiting(self) -> list[Example]:
        """Every example not taken yet (part of a checkpoint)."""
        return self._ready[self._head:]

    @property
    def ready(self) -> int:
        return len(self._ready) - self._head


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

    def peek(self, limit: int) -> list[Example]: ...

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
