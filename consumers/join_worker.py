"""The join stage (``streamrec join``): workers in one consumer group turn events into labelled examples.

Reading, validating and joining events costs a trainer more CPU than learning, and it is the
same work for every model, so join workers scale out in one consumer group on the impressions
and clicks topics; each labelled example is written once to ``<ns>.examples`` (same partition
index as its source), from which every model's trainer reads (``train --from-examples``).

Exactly once per source partition ``p``, the unit a worker owns: ``p``'s checkpoint (joiner
state, counters, input offsets, the output offset; redis_keys.join_checkpoint) is written after
the producer delivered everything before it, and only under the epoch the writer took. A worker
that takes ``p`` over reads back what its predecessor wrote after the checkpoint, regenerates
those examples from the events, counts them and does not write them again. docs/scaling.md has
the protocol and its one gap (a paused worker may append a few examples before it notices).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis

from streamrec.consumers import example_messages
from streamrec.consumers.example_source import Example
from streamrec.consumers.join_exporter import STAGE_LABEL, TOTALS, JoinExporter, JoinReadings
from streamrec.consumers.joiner import Joiner
from streamrec.consumers.kafka_worker import KafkaWorker, WorkerIdentity
from streamrec.consumers.worker_counters import MASK64, Counters
from streamrec.stream import redis_keys
from streamrec.stream.errors import StackError
from streamrec.stream.kafka_client import EventConsumer, Record, TopicPartitionKey, make_consumer
from streamrec.stream.redis_connection import connect, retry_while_unavailable
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)
READ_BACK_TIMEOUT_S = 60.0
# Settings a join worker takes from streamrec.stream.settings.Settings, under the same names.
SETTINGS_FIELDS = ("attribution_window_s", "max_pending_impressions", "positives", "join_checkpoint_every_s",
                   "metrics_port", "metrics_host", "max_event_time_ahead_s")


def state_finished(state: dict[str, Any]) -> bool:
    """Whether a checkpointed partition is done (checkpoints written before ``finished`` was
    stored say ``final_sent`` only)."""
    return bool(state.get("finished", state["final_sent"]))


def read_checkpoints(client: redis.Redis, namespace: str, partitions: int) -> dict[int, dict[str, Any]]:
    """The stored checkpoint of each partition that has one (--exit-at-end, `streamrec join --status`)."""
    with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hget(redis_keys.join_checkpoint(namespace, p), "state")
        raws = pipe.execute()
    return {p: orjson.loads(raw) for p, raw in enumerate(raws) if raw is not None}


@dataclass(frozen=True)
class JoinOptions:
    """One join worker's options; build them with :meth:`from_settings` (one name and default per setting)."""

    attribution_window_s: float
    max_pending_impressions: int   # per partition
    positives: str
    join_checkpoint_every_s: float
    metrics_port: int | None
    metrics_host: str
    max_event_time_ahead_s: float
    worker_id: str = "join-0"
    poll_records: int = 5000
    exit_at_end: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> JoinOptions:
        return cls(**{**{name: getattr(settings, name) for name in SETTINGS_FIELDS}, **overrides})


@dataclass
class ShardCounters(Counters):
    """A partition's counters, plus the examples a predecessor had written after its checkpoint
    (regenerated here, not written again)."""

    regenerated: int = 0


@dataclass
class Shard:
    """One source partition owned by this worker."""

    partition: int
    epoch: int
    joiner: Joiner
    counters: ShardCounters
    offsets: dict[str, int]                 # topic kind -> next offset to read
    output_offset: int                      # offset of examples:p the next message gets
    final_sent: bool = False
    # impression id -> label of examples a predecessor wrote after the checkpoint
    written: dict[str, int] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)  # the totals when this worker took p over

    @property
    def finished(self) -> bool:
        """The final marker is on examples:p and this owner's joiner has read to the end. The
        marker alone is not enough: a predecessor may have written it (and the examples before
        it) after the checkpoint, and this owner has yet to regenerate them to count them."""
        return self.final_sent and self.joiner.finished([self.partition])

    def totals(self) -> dict[str, int]:
        counts = {**asdict(self.counters), **asdict(self.joiner.counts)}
        return {name: counts[name] for name in TOTALS}


class JoinWorker(KafkaWorker):
    """Owns some source partitions in the join stage's consumer group, turns their events into
    labelled examples written once to ``<ns>.examples``; see the module docstring."""

    role = "joiner"

    def __init__(self, settings: Settings, options: JoinOptions, *, kafka_bootstrap: str, redis_url: str) -> None:
        super().__init__(settings, WorkerIdentity(options.worker_id, options.metrics_port, options.metrics_host),
                         kafka_bootstrap=kafka_bootstrap, redis_client=connect(redis_url),
                         exporter=JoinExporter(options.worker_id), group_id=f"streamrec-join-{settings.namespace}",
                         topics={settings.impressions_topic: "impressions", settings.clicks_topic: "clicks"},
                         model_label=STAGE_LABEL, poll_records=options.poll_records)
        self.options = options
        self.shards: dict[int, Shard] = {}
        self._retired = dict.fromkeys(TOTALS, 0)  # what this worker counted on partitions it handed back
        self._reader: EventConsumer | None = None
        self._last_checkpoint = time.monotonic()
        self._last_end_check = 0.0
        self._partition_count = 0
        self.metrics.attach(self.readings)

    # ------------------------------------------------------------------ ownership

    def on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        seeks: dict[TopicPartitionKey, int] = {}
        for p in sorted({partition for _topic, partition in partitions}):
            if p in self.shards:
                continue
            shard = self._take_over(p)
            self.shards[p] = shard
            for topic, kind in self.topics.items():
                if kind in shard.offsets:
                    seeks[(topic, p)] = shard.offsets[kind]
        log.info("join worker %s owns partitions %s", self.options.worker_id, sorted(self.shards))
        return seeks

    def _take_over(self, p: int) -> Shard:
        key = redis_keys.join_checkpoint(self.settings.namespace, p)

        def claim() -> tuple[int, bytes | None]:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "epoch", 1)
                pipe.hget(key, "state")
                epoch, state = pipe.execute()
            return int(epoch), state

        epoch, raw = retry_while_unavailable(f"claiming partition {p}", claim, self.stop_event)
        if raw is None:
            shard = Shard(p, epoch, Joiner(self.options.attribution_window_s, self.options.max_pending_impressions,
                                           self.options.positives, self.options.max_event_time_ahead_s),
                          ShardCounters(), {}, 0)
        else:
            state = orjson.loads(raw)
            shard = Shard(p, epoch, Joiner.from_state(state["joiner"]), ShardCounters(**state["counters"]),
                          dict(state["offsets"]), int(state["output_offset"]), bool(state["final_sent"]),
                          written={k: v for k, v in state.get("written", ())})
        end = self._read_back(shard)
        shard.output_offset = end
        shard.baseline = shard.totals()
        log.info("partition %d: epoch %d, offsets %s, %d examples written after the checkpoint", p, epoch,
                 shard.offsets, len(shard.written))
        return shard

    def _read_back(self, shard: Shard) -> int:
        """Collect what a predecessor wrote to examples:p after the checkpoint; return the end offset."""
        assert self._reader is not None
        tp = (self.settings.examples_topic, shard.partition)
        end = self._reader.end_offsets([tp])[tp]
        if end <= shard.output_offset:
            return max(end, shard.output_offset)
        self._reader.assign_at({tp: shard.output_offset})
        deadline = time.monotonic() + READ_BACK_TIMEOUT_S
        position = shard.output_offset
        while position < end:
            if time.monotonic() > deadline:
                raise StackError(f"could not read {tp[0]}:{tp[1]} back to offset {end} in {READ_BACK_TIMEOUT_S}s")
            for record in self._reader.poll(10_000, 0.5):
                if record.offset >= end:
                    continue
                position = max(position, record.offset + 1)
                try:
                    _p, examples, final = example_messages.decode(record.value)
                except ValueError:
                    continue  # not ours
                shard.written.update((e.impression_id, e.label) for e in examples)
                shard.final_sent = shard.final_sent or final
        return end

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        gone = sorted({p for _topic, p in partitions} & set(self.shards))
        if gone:
            self._checkpoint(gone)
            for p in gone:
                self._retire(p)

    def _retire(self, p: int) -> None:
        shard = self.shards.pop(p, None)
        if shard is not None:
            now = shard.totals()
            for name in TOTALS:
                self._retired[name] += now[name] - shard.baseline[name]

    # ------------------------------------------------------------------ events → examples

    def handle(self, records: Sequence[Record]) -> None:
        for p in self._dispatch(records):
            self._emit(self.shards[p])

    def _dispatch(self, records: Sequence[Record]) -> set[int]:
        touched: set[int] = set()
        for record in records:
            topic, p = record.topic, record.partition
            shard = self.shards.get(p)
            kind = self.topics.get(topic)
            if shard is None or kind is None:
                continue  # revoked meanwhile: its new owner reads it again
            shard.offsets[kind] = record.offset + 1
            touched.add(p)
            taken, dead = shard.joiner.offer_message(p, kind, record.value)
            for etype, n in taken.items():
                shard.counters.count_read(etype, n)
            for raw, problem in dead:
                self.dead_letter(raw, problem, topic, p, record.offset)
                shard.counters.dead_letters += 1
        return touched

    def _emit(self, shard: Shard) -> None:
        """Write the examples the joiner released (except those a predecessor already wrote)."""
        assert self.producer is not None
        shard.joiner.advance()
        released = shard.joiner.take()
        if released:
            fresh: list[Example] = []
            pairs: list[tuple[str, int]] = []
            written = shard.written
            for example in released:
                label = written.pop(example.impression_id, None) if written else None
                if label is None:
                    fresh.append(example)
                    label = example.label
                else:
                    shard.counters.regenerated += 1
                    self.metrics.skipped.labels(**self.metrics.labels).inc()
                pairs.append((example.impression_id, label))
            shard.counters.count_examples([i for i, _ in pairs], [label for _, label in pairs])
            topic = self.settings.examples_topic
            size = example_messages.MAX_EXAMPLES_PER_MESSAGE
            for start in range(0, len(fresh), size):
                self.producer.send(topic, example_messages.encode(shard.partition, fresh[start:start + size]),
                                   partition=shard.partition)
                shard.output_offset += 1
        if not shard.final_sent and shard.joiner.finished([shard.partition]):
            self.producer.send(self.settings.examples_topic, example_messages.encode_final(shard.partition),
                               partition=shard.partition)
            shard.output_offset += 1
            shard.final_sent = True

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, partitions: list[int] | None = None) -> None:
        """Deliver everything written so far, then store each shard's state under its epoch."""
        if self.producer is None or self.consumer is None:
            return
        shards = [self.shards[p] for p in (sorted(self.shards) if partitions is None else partitions)
                  if p in self.shards]
        if not shards:
            return
        self.producer.flush()
        commits: dict[TopicPartitionKey, int] = {}
        labels = self.metrics.labels
        for shard in shards:
            state = orjson.dumps({
                "joiner": shard.joiner.state(), "counters": asdict(shard.counters), "offsets": shard.offsets,
                "output_offset": shard.output_offset, "final_sent": shard.final_sent, "finished": shard.finished,
                "worker": self.options.worker_id, "epoch": shard.epoch,
                # examples a predecessor wrote that this owner has not regenerated yet: the next
                # owner reads the topic back from output_offset only, so it must learn them here
                "written": [[k, v] for k, v in shard.written.items()],
            })
            try:
                stored = self._store(shard, state)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.metrics.checkpoint_failures.labels(**labels).inc()
                log.warning("checkpoint of partition %d failed (%s); the next one includes it", shard.partition, exc)
                continue
            if not stored:
                self.metrics.checkpoint_failures.labels(**labels).inc()
                log.warning("partition %d has a new owner; dropping it here", shard.partition)
                self._retire(shard.partition)
                continue
            self.metrics.checkpoints.labels(**labels).inc()
            for topic, kind in self.topics.items():
                if kind in shard.offsets:
                    commits[(topic, shard.partition)] = shard.offsets[kind]
        try:
            self.consumer.commit(commits)
        except Exception as exc:  # noqa: BLE001 - the checkpoint is the source of truth; commits are for lag tools
            log.debug("offset commit failed: %s", exc)
        self._last_checkpoint = time.monotonic()

    def _store(self, shard: Shard, state: bytes) -> bool:
        key = redis_keys.join_checkpoint(self.settings.namespace, shard.partition)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if int(pipe.hget(key, "epoch") or 0) != shard.epoch:
                    return False
                pipe.multi()
                pipe.hset(key, "state", state)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._reader = make_consumer(self.kafka_bootstrap, f"{self.group_id}-read-back-{self.options.worker_id}",
                                     self.settings.kafka_client, self.settings.consumer_session_timeout_ms,
                                     self.security)

    def tick(self) -> bool:
        now = time.monotonic()
        if now - self._last_checkpoint >= self.options.join_checkpoint_every_s:
            self._checkpoint()
        # a worker left without partitions (the group shrank at the end) may stop too
        if self.options.exit_at_end and now - self._last_end_check >= 0.5:
            self._last_end_check = now
            if all(s.finished for s in self.shards.values()):
                self._checkpoint()
                return self._all_finished()
        return False

    def _all_finished(self) -> bool:
        assert self.consumer is not None
        if not self._partition_count:
            self._partition_count = self.consumer.partition_count(self.settings.impressions_topic)
        if not self._partition_count or any(not s.finished for s in self.shards.values()):
            return False
        try:
            states = read_checkpoints(self.redis, self.settings.namespace, self._partition_count)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return len(states) == self._partition_count and all(state_finished(s) for s in states.values())

    def finish(self, finished: bool) -> dict[str, Any]:
        self._checkpoint()
        return self.report(finished)  # before closing: the close hands the partitions back

    def close_extra(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ reporting

    def readings(self) -> JoinReadings:
        """What /metrics shows now (called from the metrics server's thread)."""
        shards = list(self.shards.values())
        totals = dict(self._retired)
        for shard in shards:
            now = shard.totals()
            for name in TOTALS:
                totals[name] += now[name] - shard.baseline.get(name, now[name])
        return JoinReadings(totals, sum(s.joiner.open_impressions for s in shards), len(shards),
                            self.settings.impressions_topic, self.settings.clicks_topic)

    def report(self, finished: bool) -> dict[str, Any]:
        """Totals of the partitions owned now, over the whole stream (their checkpoints carry
        what earlier owners counted)."""
        totals = ShardCounters()
        for shard in self.shards.values():
            for name, value in asdict(shard.counters).items():
                setattr(totals, name, getattr(totals, name) + value)
        return {"worker": self.options.worker_id, "partitions": sorted(self.shards),
                "assignments": self.assignments, "finished": finished,
                **{k: v for k, v in asdict(totals).items() if k != "digest"},
                "digest": f"{totals.digest & MASK64:016x}",
                "wall_seconds": time.monotonic() - self.started_at}

    def close(self) -> None:
        super().close()
        self.redis.close()


__all__ = ["JoinOptions", "JoinWorker", "read_checkpoints"]

