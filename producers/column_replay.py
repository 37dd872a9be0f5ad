"""The replay producer over column chunks: the same events as :func:`~streamrec.producers.replay.replay`,
made a block of rows at a time.

``replay`` turns every row into an event dict and every buffer of dicts into a message; that is a
Python object per value, which bounds it to tens of thousands of events a second. Here a column
chunk (producers/columns.py) becomes one Arrow table of impressions, and each message is a
``take`` of its partition's rows from it (stream/event_columns.py), so a value is touched in
Python only where the event needs it as a string of its own (its id).

It sends exactly what ``replay`` sends with ``encoding="columns"`` and no pacing, to the same
partitions and cut into the same messages: impressions by row index, clicks by (click time, row
index) with the same seeded delays, a watermark on every partition before the first row at or
past each ``watermark_every_s`` of event time and ``watermark_min_rows`` rows (every buffer sent
before it), final watermarks at the end, dead letters for rows ``validate`` refuses, and ``resume`` skipping what an earlier run
delivered. tests/test_column_replay.py compares the two message for message. Rows must come in
event-time order, as the columnar reader gives them.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

from streamrec.producers.replay import (
    Partitioner,
    ReplayOptions,
    ReplayReport,
    finish_run,
    send_watermarks,
    start_run,
    watermark_min_rows,
)
from streamrec.stream import events
from streamrec.stream.arrow_ipc import write_table
from streamrec.stream.columns import CategoricalColumn, ColumnChunk, NumericColumn
from streamrec.stream.event_columns import FORMAT, row_event
from streamrec.stream.kafka_client import EventProducer

_METADATA = {"impression": {b"streamrec": FORMAT, b"type": b"impression"},
             "click": {b"streamrec": FORMAT, b"type": b"click"}}


def _strings(column: CategoricalColumn) -> pa.Array:
    if column.arrow is not None and column._values is None:  # as read: no Python string per value
        values = pa.concat_arrays([column.arrow.cast(pa.string()), pa.nulls(1, pa.string())])
    else:
        values = pa.array(np.append(column.values.astype(object), None), type=pa.string())
    return values.take(pa.array(column.codes.astype(np.int64)))


def _numbers(column: NumericColumn) -> pa.Array:
    values = column.values
    missing = np.zeros(len(values) + 1, dtype=bool)
    missing[-1] = True
    integral = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))
                    and np.all(np.abs(values) < 2**62))
    # integers stay integers, as the row readers give them (and a JSON event would hold them)
    padded = np.append(values, 0).astype(np.int64 if integral else np.float64)
    return pa.array(padded, mask=missing).take(pa.array(column.codes.astype(np.int64)))


def _too_long(column: CategoricalColumn) -> np.ndarray:
    """Rows whose value has more characters than an id may."""
    lengths = np.fromiter(map(len, column.values.tolist()), dtype=np.int64, count=len(column.values))
    return np.append(lengths > events.MAX_ID_CHARS, False)[column.codes]


def _finite(column: NumericColumn) -> np.ndarray:
    return np.append(np.isfinite(column.values), True)[column.codes]


class _Buffers:
    """Per (topic, partition) rows waiting to leave, as Arrow tables; a full buffer leaves as one
    message of ``size`` events, and :meth:`flush` sends every remainder."""

    def __init__(self, send: Callable[..., None], size: int) -> None:
        self._send, self.size = send, size
        self._waiting: dict[tuple[str, int], list[pa.Table]] = {}
        self._count: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, table: pa.Table) -> None:
        key = (topic, partition)
        pieces = self._waiting.setdefault(key, [])
        pieces.append(table)
        count = self._count.get(key, 0) + table.num_rows
        if count >= self.size:
            whole = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
            start = 0
            while count - start >= self.size:
                self._emit(topic, partition, whole.slice(start, self.size))
                start += self.size
            pieces[:] = [whole.slice(start)] if start < count else []
            count -= start
        self._count[key] = count

    def flush(self) -> None:
        for (topic, partition), pieces in self._waiting.items():
            if self._count.get((topic, partition)):
                self._emit(topic, partition, pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0])
        self._waiting.clear()
        self._count.clear()

    def _emit(self, topic: str, partition: int, table: pa.Table) -> None:
        kind = "impression" if "item_id" in table.column_names else "click"
        self._send(topic, write_table(table.replace_schema_metadata(_METADATA[kind])), None, partition)


def replay_columns(chunks: Iterable[ColumnChunk], producer: EventProducer, *, impressions_topic: str,
                   clicks_topic: str, dead_letter_topic: str, partitions: int,
                   options: ReplayOptions = ReplayOptions(),
                   on_progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Send every row of ``chunks`` as events, as :func:`replay` would; flush; return counts and rate."""
    if options.rate is not None or options.speedup is not None:
        raise ValueError("replay_columns sends as fast as it can: pace a replay with replay()")
    if options.encoding != "columns" or options.events_per_message < 2:
        raise ValueError("replay_columns sends columnar batches: use replay() for JSON or single events")
    rng = random.Random(options.seed)
    run_id, resume, resumed_past = start_run(options, impressions_topic)
    send = producer.send
    partition_of = Partitioner(partitions)
    buffers = _Buffers(send, options.events_per_message)
    report = ReplayReport()
    pending: list[tuple[float, int, str, int]] = []  # (click time, row index, user, partition)
    started = time.perf_counter()
    last_time = float("-inf")
    next_watermark = float("-inf")
    min_rows = watermark_min_rows(options, partitions)
    kept_rows, watermark_row = 0, -min_rows  # valid rows before this chunk; the last watermark's row
    mean, cap = 1.0 / options.click_delay_mean_s, options.click_delay_max_s

    def emit_clicks_until(limit: float) -> None:
        due: list[tuple[float, int, str, int]] = []
        while pending and pending[0][0] <= limit:
            due.append(heapq.heappop(pending))
        report.clicks += len(due)  # a click skipped as delivered is still the replay's
        if resume is not None:
            due = [c for c in due if not resume.sent(clicks_topic, c[3], (c[0], c[1]))]
        by_partition: dict[int, list[tuple[float, int, str, int]]] = {}
        for click in due:
            by_partition.setdefault(click[3], []).append(click)
        for partition, clicks in by_partition.items():
            ids = [f"{run_id}-{index}" for _t, index, _u, _p in clicks]
            buffers.add(clicks_topic, partition, pa.table({
                "event_id": pa.array([f"{i}-c" for i in ids], type=pa.string()),
                "event_time": pa.array([c[0] for c in clicks], type=pa.float64()),
                "user_id": pa.array([c[2] for c in clicks], type=pa.string()),
                "impression_id": pa.array(ids, type=pa.string()),
            }))

    def watermark(at: float) -> None:
        buffers.flush()
        send_watermarks(send, (impressions_topic, clicks_topic), partitions, at)

    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        times = chunk.event_times
        if times is None or (n > 1 and np.any(np.diff(times) < 0)):
            raise ValueError("replay_columns needs rows in event-time order with their times")
        index = chunk.first_row + np.arange(n)
        bad = _too_long(chunk.users) | _too_long(chunk.items)
        for column in chunk.numeric.values():
            bad |= ~_finite(column)
        user_strings = chunk.users.values.astype(object)
        if bad.any():
            table = _impressions(chunk, run_id)
            for k in np.flatnonzero(bad).tolist():
                event = row_event("impression", table, k)
                problem = events.validate(event) or "invalid event"
                if index[k] > resumed_past:
                    send(dead_letter_topic, events.dead_letter(events.encode(event), problem, "replay"), None)
                report.dead_letters += 1
        keep = np.flatnonzero(~bad)
        if not len(keep):
            continue
        table = _impressions(chunk, run_id).take(pa.array(keep))
        times, index = times[keep], index[keep]
        users = chunk.users.codes[keep]
        user_partition = np.array([partition_of(str(u).encode()) for u in user_strings.tolist()], dtype=np.int64) \
            if len(user_strings) else np.zeros(0, dtype=np.int64)
        row_partition = user_partition[users]
        labels = chunk.labels[keep]
        # watermark rows: the first at or past each watermark_every_s of event time that is also
        # min_rows valid rows past the last watermark's (what the row replay does row by row)
        starts = []
        at = 0
        while at < len(times):
            at = int(np.searchsorted(times, next_watermark, side="left")) if times[at] < next_watermark else at
            at = max(at, watermark_row + min_rows - kept_rows)
            if at >= len(times):
                break
            starts.append(at)
            next_watermark = float(times[at]) + options.watermark_every_s
            watermark_row = kept_rows + at
            at += 1
        kept_rows += len(times)
        bounds = [0, *starts, len(times)] if not starts or starts[0] != 0 else [*starts, len(times)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a in starts:
                emit_clicks_until(float(times[a]))
                watermark(float(times[a]))
            segment = np.arange(a, b)
            for partition in np.unique(row_partition[a:b]).tolist():
                rows = segment[row_partition[a:b] == partition]
                if resume is not None:
                    rows = rows[[not resume.sent(impressions_topic, partition, (0.0, int(i))) for i in index[rows]]]
                if len(rows):
                    buffers.add(impressions_topic, partition, table.take(pa.array(rows)))
            for k in np.flatnonzero(labels[a:b]).tolist():
                row = a + k
                delay = min(rng.expovariate(mean), cap)
                user = str(user_strings[users[row]])
                heapq.heappush(pending, (float(times[row]) + delay, int(index[row]), user, int(row_partition[row])))
            if b > a and b < len(times):
                emit_clicks_until(float(times[b - 1]))
        report.impressions += len(keep)
        last_time = max(last_time, float(times[-1]))
        if on_progress is not None:
            on_progress(n)
    emit_clicks_until(float("inf"))
    buffers.flush()
    return finish_run(producer, report, options, (impressions_topic, clicks_topic), partitions, last_time, started)


def _impressions(chunk: ColumnChunk, run_id: str) -> pa.Table:
    """Every row of ``chunk`` as an impression, in the columnar batch's columns."""
    n = len(chunk)
    features = {name: _numbers(column) for name, column in chunk.numeric.items()}
    features.update((name, _strings(column)) for name, column in chunk.categorical.items())
    assert chunk.event_times is not None
    return pa.table({
        "event_id": pa.array([f"{run_id}-{i}" for i in range(chunk.first_row, chunk.first_row + n)], type=pa.string()),
        "event_time": pa.array(chunk.event_times, type=pa.float64()),
        "user_id": _strings(chunk.users),
        "item_id": _strings(chunk.items),
        "features": pa.StructArray.from_arrays(list(features.values()), names=list(features))
        if features else pa.array([{}] * n, type=pa.struct([])),
    })


