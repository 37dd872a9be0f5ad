"""The replay producer: a log's rows become impression and click events on Kafka.

Each row is one impression; a positive row also yields a click, delayed after its impression in
event time by an exponential delay (mean ``click_delay_mean_s``, capped at ``click_delay_max_s``).
Events leave in event-time order: pending clicks wait in a heap and go out as soon as the
impression stream passes their time. Impressions and clicks are keyed by user id, so a user's
events share a partition. The replay ends with a final watermark on every partition of both
topics, which lets trainers close all open attribution windows; every ``watermark_every_s`` of
event time a non-final watermark goes to every partition too, so a partition that sees few
clicks does not hold its impressions open until the end (unpaced, also not before
``watermark_min_rows`` rows have passed since the last one: see :func:`watermark_min_rows`).

Pacing: as fast as possible (default), ``rate`` events per second, or ``speedup`` times event
time. An event that fails validation goes to the dead-letter topic with its reason and is counted.

Batching: up to ``events_per_message`` impressions (or clicks) of one partition leave as one
message, a columnar batch (Arrow IPC, stream/event_columns.py; ``encoding="json"``: a JSON array,
stream/events.py); the replay computes each user's partition with Kafka's
murmur2, exactly where a keyed message would go. Every partition's buffer is sent before a
watermark (so a watermark still follows every event before it) and before the pacer sleeps (so a
paced replay delays no event by more than its pacing). ``events_per_message=1`` sends every event
as a keyed message of its own, for consumers that expect one event per message.

Resuming (``ReplayOptions.resume``): a replay is deterministic given its rows, seed and run id, and
each (topic, partition) receives its events in one fixed order: impressions by row index, clicks by
(click time, row index). So a replay restarted with the same run id after a crash reads the last
event of that run on every partition (:func:`resume_positions`) and sends only what comes after it
there: nothing twice, nothing lost, whatever instant the crash hit. Watermarks are sent again;
an old watermark moves no partition's time back.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from streamrec.producers.readers import Row
from streamrec.stream import events
from streamrec.stream.event_columns import decode_columns, encode_columns, is_columnar
from streamrec.stream.kafka_client import EventConsumer, EventProducer, key_partition

ENCODINGS = ("columns", "json")


@dataclass(frozen=True)
class ReplayOptions:
    """Pacing, click delays, watermarks and batching of a replay."""

    rate: float | None = None
    speedup: float | None = None
    click_delay_mean_s: float = 2.0
    click_delay_max_s: float = 20.0
    seed: int = 0
    run_id: str | None = None
    watermark_every_s: float = 5.0
    # rows a watermark also waits for since the one before (None: events_per_message x partitions
    # when unpaced and batched, else 0); see watermark_min_rows
    watermark_min_rows: int | None = None
    # False leaves the stream open (more will follow): trainers keep the last window's impressions.
    final_watermarks: bool = True
    # events of one partition per message (1: a keyed message per event); see the module docstring
    events_per_message: int = 256
    # where an earlier replay with this run id stopped (resume_positions); None sends everything
    resume: ResumePositions | None = None
    # how a batch travels: "columns" (Arrow IPC, stream/event_columns.py) or "json" (an array)
    encoding: str = "columns"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {self.encoding!r}")
        if self.watermark_min_rows is not None and self.watermark_min_rows < 0:
            raise ValueError(f"watermark_min_rows must be >= 0, not {self.watermark_min_rows}")


def watermark_min_rows(options: ReplayOptions, partitions: int) -> int:
    """Rows that pass between two watermarks at least. Every watermark sends every partition's
    buffer first, so an unpaced replay of a log that is sparse in event time (a Criteo file's rows
    are 10 ms apart) would send messages of a few dozen events each, and consumers pay mostly per
    message; by default an unpaced batched replay lets a message's worth per partition pass
    (``events_per_message`` x ``partitions`` rows) before the next watermark. A paced replay, or
    one event per message, waits for event time alone."""
    if options.watermark_min_rows is not None:
        return options.watermark_min_rows
    if options.rate is not None or options.speedup is not None or options.events_per_message <= 1:
        return 0
    return options.events_per_message * partitions


# A partition's order key of its last event sent: an impression's row index, or a click's (time, row index).
OrderKey = tuple[float, int]


@dataclass(frozen=True)
class ResumePositions:
    """The order key of the last event a run sent to each (topic, partition); absent: nothing sent there."""

    run_id: str
    last: dict[tuple[str, int], OrderKey]

    def sent(self, topic: str, partition: int, key: OrderKey) -> bool:
        last = self.last.get((topic, partition))
        return last is not None and key <= last

    @property
    def events_found(self) -> int:
        return len(self.last)


def _order_key(kind: str, impression_id: Any, event_time: Any, run_id: str) -> OrderKey | None:
    if not isinstance(impression_id, str) or not impression_id.startswith(run_id + "-"):
        return None
    try:
        index = int(impression_id[len(run_id) + 1:])
    except ValueError:
        return None
    return (float(event_time), index) if kind == "click" else (0.0, index)


def event_order_key(event: events.Event, run_id: str) -> OrderKey | None:
    """Where a JSON event of run ``run_id`` sits in its partition's order (None: another run's)."""
    kind = event.get("type")
    if kind not in ("click", "impression"):
        return None
    impression_id = event.get("impression_id") if kind == "click" else event.get("event_id")
    return _order_key(kind, impression_id, event.get("event_time"), run_id)


def message_order_keys(raw: bytes, run_id: str) -> list[OrderKey]:
    """The order keys of run ``run_id``'s valid events in one message. A columnar batch is read
    from its id and time columns; its features are never turned into dicts."""
    if is_columnar(raw):
        columns, _bad = decode_columns(raw)
        if columns is None:
            return []
        ids = columns.targets if columns.kind == "click" else columns.event_ids
        found = (_order_key(columns.kind, i, t, run_id) for i, t in zip(ids, columns.times))
    else:
        found = (event_order_key(e, run_id) for e in events.decode_events(raw)[0])
    return [k for k in found if k is not None]


def resume_positions(consumer: EventConsumer, topics: tuple[str, str], partitions: int, run_id: str,
                     step: int = 64) -> ResumePositions:
    """Where replay ``run_id`` stopped on each partition of ``(impressions, clicks)``: the largest
    order key of the run among the newest ``step`` messages that hold any of its events (read
    backwards from the end)."""
    last: dict[tuple[str, int], OrderKey] = {}
    tps = [(topic, p) for topic in topics for p in range(partitions)]
    ends = consumer.end_offsets(tps)
    # Every partition steps back together, one assignment per step: a consumer moved from one
    # partition to the next waits out the fetch it left parked at the old one's end.
    pending = {tp: end for tp, end in ends.items() if end > 0}
    while pending:
        starts = {tp: max(0, end - step) for tp, end in pending.items()}
        consumer.assign_at(starts)
        records: dict[tuple[str, int], list] = {tp: [] for tp in pending}
        position = dict(starts)
        while True:
            left = sum(max(0, end - position[tp]) for tp, end in pending.items())
            if not left:
                break
            batch = consumer.poll(left, 1.0)
            if not batch:
                break
            for record in batch:
                tp = (record.topic, record.partition)
                if tp in pending and record.offset < pending[tp]:
                    records[tp].append(record)
                    position[tp] = max(position[tp], record.offset + 1)
        for tp in list(pending):
            # The largest key of the chunk, not the newest message's: a message the broker refused
            # once is sent again a little later, behind newer ones (stream/kafka_client.py).
            keys = [k for record in records[tp] for k in message_order_keys(record.value, run_id)]
            if keys:
                last[tp] = max(keys)
            if keys or starts[tp] == 0:
                del pending[tp]
            else:
                pending[tp] = starts[tp]
    return ResumePositions(run_id, last)


@dataclass
class ReplayReport:
    """What a replay sent, and how fast."""

    impressions: int = 0
    clicks: int = 0
    dead_letters: int = 0
    events_per_second: float = 0.0
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PARTITION_CACHE_LIMIT = 1 << 20


class Partitioner:
    """Where a keyed message goes: Kafka's murmur2 of the key modulo the partition count. It runs
    in Python, so users' partitions are remembered; a log with millions of users starts the cache
    over rather than grow it without bound."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._partition_of: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= PARTITION_CACHE_LIMIT:
                self._partition_of.clear()
            partition = self._partition_of[key] = key_partition(key, self.partitions)
        return partition


def start_run(options: ReplayOptions, impressions_topic: str) -> tuple[str, ResumePositions | None, int]:
    """The run id, the positions it resumes from, and the last row index an earlier run of it got
    past (its rows' dead letters are not sent again)."""
    run_id = options.run_id or uuid.uuid4().hex[:8]
    resume = options.resume
    if resume is not None and resume.run_id != run_id:
        raise ValueError(f"resume positions of run {resume.run_id!r} given to run {run_id!r}")
    resumed_past = max((key[1] for (topic, _p), key in resume.last.items() if topic == impressions_topic),
                       default=-1) if resume is not None else -1
    return run_id, resume, resumed_past


def send_watermarks(send: Callable[..., None], topics: tuple[str, str], partitions: int, at: float,
                    final: bool = False) -> None:
    """A watermark at ``at`` on every partition of both topics."""
    mark = events.encode(events.watermark(at, final=final))
    for topic in topics:
        for partition in range(partitions):
            send(topic, mark, None, partition)


def finish_run(producer: EventProducer, report: ReplayReport, options: ReplayOptions, topics: tuple[str, str],
               partitions: int, last_time: float, started: float) -> ReplayReport:
    """Final watermarks (unless the stream stays open), flush, and the report's rate."""
    if options.final_watermarks:
        send_watermarks(producer.send, topics, partitions, last_time if last_time > float("-inf") else 0.0,
                        final=True)
    producer.flush()
    report.wall_seconds = time.perf_counter() - started
    report.events_per_second = (report.impressions + report.clicks) / report.wall_seconds if report.wall_seconds else 0.0
    return report


class _Batcher:
    """Per (topic, partition) buffers of events; a full buffer leaves as one message."""

    def __init__(self, send: Callable[..., None], size: int, partitions: int, encoding: str = "columns") -> None:
        if size < 1:
            raise ValueError("events_per_message must be at least 1")
        self._send, self.size, self.partitions = send, size, partitions
        self._columns = encoding == "columns"
        self._buffers: dict[tuple[str, int], list[events.Event]] = {}
        self.partition = Partitioner(partitions)
        # set when resuming: True for an event an earlier run already delivered to that partition
        self.skip: Callable[[str, int, events.Event], bool] | None = None

    def add(self, topic: str, key: bytes, event: events.Event) -> bool:
        """Buffer (or send) ``event``; False if it was skipped as already delivered."""
        partition = self.partition(key)
        if self.skip is not None and self.skip(topic, partition, event):
            return False
        if self.size == 1:
            self._send(topic, events.encode(event), key)
            return True
        buffer = self._buffers.setdefault((topic, partition), [])
        buffer.append(event)
        if len(buffer) >= self.size:
            self._send(topic, self._encode(buffer), None, partition)
            self._buffers[(topic, partition)] = []
        return True

    def flush(self) -> None:
        for (topic, partition), buffer in self._buffers.items():
            if buffer:
                self._send(topic, self._encode(buffer), None, partition)
        self._buffers.clear()

    def _encode(self, buffer: list[events.Event]) -> bytes:
        # a batch whose values cannot be columns (a field both string and number) goes as JSON
        return (self._columns and encode_columns(buffer)) or events.encode_batch(buffer)


class _Pacer:
    def __init__(self, options: ReplayOptions) -> None:
        self.rate, self.speedup = options.rate, options.speedup
        self.started = time.perf_counter()
        self.first_event_time: float | None = None

    def wait(self, sent: int, event_time: float, before_sleep: Callable[[], None] = lambda: None) -> None:
        if self.rate:
            ahead = sent / self.rate - (time.perf_counter() - self.started)
        elif self.speedup:
            if self.first_event_time is None:
                self.first_event_time = event_time
            ahead = (event_time - self.first_event_time) / self.speedup - (time.perf_counter() - self.started)
        else:
            return
        if ahead > 0.002:
            before_sleep()
            time.sleep(ahead)


def replay(rows: Iterable[Row], producer: EventProducer, *, impressions_topic: str, clicks_topic: str,
           dead_letter_topic: str, partitions: int, options: ReplayOptions = ReplayOptions(),
           on_progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Send every row as events; flush; return counts and rate."""
    if options.rate is not None and options.speedup is not None:
        raise ValueError("choose either rate or speedup, not both")
    rng = random.Random(options.seed)
    run_id, resume, resumed_past = start_run(options, impressions_topic)
    report = ReplayReport()
    pacer = _Pacer(options)
    pending: list[tuple[float, int, bytes, events.Event]] = []  # (event_time, seq, key, click) of clicks
    send = producer.send
    validate = events.validate
    batcher = _Batcher(send, options.events_per_message, partitions, options.encoding)
    if resume is not None:
        batcher.skip = lambda topic, partition, event: resume.sent(topic, partition, event_order_key(event, run_id))
    started = time.perf_counter()
    sent = 0
    last_time = float("-inf")
    next_watermark = float("-inf")
    min_rows = watermark_min_rows(options, partitions)
    valid_rows, watermark_row = 0, -min_rows  # the first valid row always gets one

    def emit_clicks_until(limit: float) -> None:
        nonlocal sent
        while pending and pending[0][0] <= limit:
            _t, _seq, key, click = heapq.heappop(pending)
            report.clicks += 1
            if batcher.add(clicks_topic, key, click):
                sent += 1

    for index, row in enumerate(rows):
        impression_id = f"{run_id}-{index}"
        event = events.impression(impression_id, row.event_time, row.user_id, row.item_id, row.features)
        problem = validate(event)
        if problem:
            if index > resumed_past:
                send(dead_letter_topic, events.dead_letter(events.encode(event), problem, "replay"), None)
            report.dead_letters += 1
            continue
        emit_clicks_until(row.event_time)
        if row.event_time >= next_watermark and valid_rows - watermark_row >= min_rows:
            # Rows arrive in event-time order and every click up to now is out: nothing earlier
            # than this row's time can follow on either topic.
            batcher.flush()
            send_watermarks(send, (impressions_topic, clicks_topic), partitions, row.event_time)
            next_watermark = row.event_time + options.watermark_every_s
            watermark_row = valid_rows
        valid_rows += 1
        key = row.user_id.encode()
        if batcher.skip is None or not batcher.skip(impressions_topic, batcher.partition(key), event):
            pacer.wait(sent, row.event_time, batcher.flush)  # what was sent before is not paced again
            batcher.add(impressions_topic, key, event)
            sent += 1
        report.impressions += 1
        last_time = max(last_time, row.event_time)
        if row.label:
            delay = min(rng.expovariate(1.0 / options.click_delay_mean_s), options.click_delay_max_s)
            click = events.click(f"{impression_id}-c", impression_id, row.event_time + delay, row.user_id)
            heapq.heappush(pending, (click["event_time"], index, key, click))
        if on_progress is not None and index % 1024 == 1023:
            on_progress(1024)
    emit_clicks_until(float("inf"))
    if pending:  # pragma: no cover - emit_clicks_until drains everything
        raise AssertionError("clicks left unsent")
    batcher.flush()
    return finish_run(producer, report, options, (impressions_topic, clicks_topic), partitions, last_time, started)
