"""The join stage (``streamrec join``): workers in one consumer group turn events into labelled examples.

Why a stage of its own: in a trainer worker, reading, validating and joining events costs more
CPU than learning (docs/scaling.md has the profile), and it is the same work for every model.
Join workers scale out in one consumer group on ``<ns>.impressions`` and ``<ns>.clicks``; each
labelled example is written once to ``<ns>.examples`` (same partition index as its source),
and every model's trainer (``streamrec train --from-examples``, the one writer of that model's
versions) reads it from there.

Exactly once, per source partition ``p`` (the unit a worker owns):

* A checkpoint (Redis hash ``streamrec:<ns>:join:<p>``) holds p's joiner state, its counters,
  the next offsets of ``impressions:p`` and ``clicks:p``, and the offset of ``examples:p`` that
  the owner's next message will get. It is written after the producer has delivered every
  message before it: every ``join_checkpoint_interval_s``, when p is revoked, and at the end.
* A worker given p bumps p's epoch, loads the checkpoint, seeks both topics to its offsets and
  reads ``examples:p`` from the checkpoint's output offset to the end: what a predecessor wrote
  after its last checkpoint. Replaying the events regenerates exactly those examples (the join
  is a function of the partition's events, consumers/joiner.py), so the worker counts them
  again but does not write them again, keyed by impression id.
* A checkpoint is written only while p's epoch is still the one this worker got, so a worker
  that lost p (paused past the session timeout) cannot overwrite its successor's state. It can
  still append a few examples before it notices; Kafka transactions would close that gap, and
  are not used because the embedded broker does not offer them.

Counters per partition (impressions, clicks, examples, positives and a digest of the examples'
(impression id, label) pairs, the same digest a trainer keeps) are in every checkpoint, so the
stage's totals are exact whatever instant a worker died (tests/test_join_stage.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis
from prometheus_client import generate_latest

from streamrec.consumers import example_messages
from streamrec.consumers.join_exporter import STAGE_LABEL, JoinMetrics
from streamrec.consumers.joiner import Example, Joiner
from streamrec.consumers.trainer_exporter import JOIN_OUTCOMES
from streamrec.consumers.worker_counters import Counters
from streamrec.stream import events as ev
from streamrec.stream.errors import StackError
from streamrec.stream.kafka_client import (
    EventConsumer,
    EventProducer,
    TopicPartitionKey,
    make_consumer,
    make_producer,
)
from streamrec.stream.redis_connection import retry_while_unavailable
from streamrec.stream.settings import Settings
from streamrec.stream.worker_registry import Heartbeat, metrics_url

log = logging.getLogger(__name__)
_MASK64 = (1 << 64) - 1
READ_BACK_TIMEOUT_S = 60.0


def checkpoint_key(namespace: str, partition: int) -> str:
    return f"streamrec:{namespace}:join:{partition}"


def read_checkpoints(client: redis.Redis, namespace: str, partitions: int) -> dict[int, dict[str, Any]]:
    """The stored checkpoint of each partition that has one (--exit-at-end, `streamrec join --status`)."""
    with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hget(checkpoint_key(namespace, p), "state")
        raws = pipe.execute()
    return {p: orjson.loads(raw) for p, raw in enumerate(raws) if raw is not None}


@dataclass(frozen=True)
class JoinOptions:
    worker_id: str = "join-0"
    window_s: float = 30.0
    max_pending: int = 1_000_000   # per partition
    positives: str = "window"
    checkpoint_every_s: float = 1.0
    poll_records: int = 5000
    exit_at_end: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


@dataclass
class ShardCounters(Counters):
    regenerated: int = 0  # examples a predecessor had written after its checkpoint, not written again


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
    exported: dict[str, int] = field(default_factory=dict)  # what reached Prometheus


class JoinWorker:
    def __init__(self, settings: Settings, options: JoinOptions, *, kafka_bootstrap: str, redis_url: str) -> None:
        self.settings, self.options = settings, options
        self.kafka_bootstrap = kafka_bootstrap
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.topics = {settings.impressions_topic: "impressions", settings.clicks_topic: "clicks"}
        self.group_id = f"streamrec-join-{settings.namespace}"
        self.metrics = JoinMetrics(options.worker_id)
        self.shards: dict[int, Shard] = {}
        self.stop_event = threading.Event()
        self.assignments = 0
        self._consumer: EventConsumer | None = None
        self._producer: EventProducer | None = None
        self._reader: EventConsumer | None = None
        self._heartbeat: Heartbeat | None = None
        self._last_checkpoint = time.monotonic()
        self._partition_count = 0
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ ownership

    def _on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        self.assignments += 1
        seeks: dict[TopicPartitionKey, int] = {}
        for p in sorted({partition for _topic, partition in partitions}):
            if p in self.shards:
                continue
            shard = self._take_over(p)
            self.shards[p] = shard
            for topic, kind in self.topics.items():
                if kind in shard.offsets:
                    seeks[(topic, p)] = shard.offsets[kind]
        self.metrics.partitions.labels(**self.metrics.labels).set(len(self.shards))
        log.info("join worker %s owns partitions %s", self.options.worker_id, sorted(self.shards))
        return seeks

    def _take_over(self, p: int) -> Shard:
        key = checkpoint_key(self.settings.namespace, p)

        def claim() -> tuple[int, bytes | None]:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "epoch", 1)
                pipe.hget(key, "state")
                epoch, state = pipe.execute()
            return int(epoch), state

        epoch, raw = retry_while_unavailable(f"claiming partition {p}", claim, self.stop_event)
        if raw is None:
            shard = Shard(p, epoch, Joiner(self.options.window_s, self.options.max_pending, self.options.positives),
                          ShardCounters(), {}, 0)
        else:
            state = orjson.loads(raw)
            shard = Shard(p, epoch, Joiner.from_state(state["joiner"]), ShardCounters(**state["counters"]),
                          dict(state["offsets"]), int(state["output_offset"]), bool(state["final_sent"]),
                          written={k: v for k, v in state.get("written", ())})
        end = self._read_back(shard)
        shard.output_offset = end
        shard.exported = {**asdict(shard.counters), **asdict(shard.joiner.counts)}
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

    def _on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        gone = sorted({p for _topic, p in partitions} & set(self.shards))
        if gone:
            self._checkpoint(gone)
            for p in gone:
                self.shards.pop(p, None)
            self.metrics.partitions.labels(**self.metrics.labels).set(len(self.shards))

    # ------------------------------------------------------------------ events → examples

    def _dead_letter(self, shard: Shard | None, raw: bytes, reason: str, topic: str, partition: int,
                     offset: int) -> None:
        assert self._producer is not None
        self._producer.send(self.settings.dead_letter_topic, ev.dead_letter(raw, reason, f"{topic}:{partition}:{offset}"))
        if shard is not None:
            shard.counters.dead_letters += 1

    def _dispatch(self, records: list[Any]) -> set[int]:
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
                self._dead_letter(shard, raw, problem, topic, p, record.offset)
        return touched

    def _emit(self, shard: Shard) -> None:
        """Write the examples the joiner released (except those a predecessor already wrote)."""
        assert self._producer is not None
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
                self._producer.send(topic, example_messages.encode(shard.partition, fresh[start:start + size]),
                                    partition=shard.partition)
                shard.output_offset += 1
        if not shard.final_sent and shard.joiner.finished([shard.partition]):
            self._producer.send(self.settings.examples_topic, example_messages.encode_final(shard.partition),
                                partition=shard.partition)
            shard.output_offset += 1
            shard.final_sent = True

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, partitions: list[int] | None = None) -> None:
        """Deliver everything written so far, then store each shard's state under its epoch."""
        if self._producer is None or self._consumer is None:
            return
        shards = [self.shards[p] for p in (sorted(self.shards) if partitions is None else partitions)
                  if p in self.shards]
        if not shards:
            return
        self._producer.flush()
        commits: dict[TopicPartitionKey, int] = {}
        for shard in shards:
            state = orjson.dumps({
                "joiner": shard.joiner.state(), "counters": asdict(shard.counters), "offsets": shard.offsets,
                "output_offset": shard.output_offset, "final_sent": shard.final_sent,
                "worker": self.options.worker_id, "epoch": shard.epoch,
                # examples a predecessor wrote that this owner has not regenerated yet: the next
                # owner reads the topic back from output_offset only, so it must learn them here
                "written": [[k, v] for k, v in shard.written.items()],
            })
            try:
                stored = self._store(shard, state)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.metrics.checkpoint_failures.labels(**self.metrics.labels).inc()
                log.warning("checkpoint of partition %d failed (%s); the next one includes it", shard.partition, exc)
                continue
            if not stored:
                self.metrics.checkpoint_failures.labels(**self.metrics.labels).inc()
                log.warning("partition %d has a new owner; dropping it here", shard.partition)
                self.shards.pop(shard.partition, None)
                continue
            self.metrics.checkpoints.labels(**self.metrics.labels).inc()
            for topic, kind in self.topics.items():
                if kind in shard.offsets:
                    commits[(topic, shard.partition)] = shard.offsets[kind]
        try:
            self._consumer.commit(commits)
        except Exception as exc:  # noqa: BLE001 - the checkpoint is the source of truth; commits are for lag tools
            log.debug("offset commit failed: %s", exc)
        self._last_checkpoint = time.monotonic()

    def _store(self, shard: Shard, state: bytes) -> bool:
        key = checkpoint_key(self.settings.namespace, shard.partition)
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

    def _export(self) -> None:
        m, labels = self.metrics, self.metrics.labels
        open_impressions = 0
        for shard in self.shards.values():
            now = {**asdict(shard.counters), **asdict(shard.joiner.counts)}
            before = shard.exported
            m.events.labels(**labels, topic=self.settings.impressions_topic).inc(
                now["impressions_read"] - before.get("impressions_read", 0))
            m.events.labels(**labels, topic=self.settings.clicks_topic).inc(
                now["clicks_read"] - before.get("clicks_read", 0))
            m.dead_letters.labels(**labels).inc(now["dead_letters"] - before.get("dead_letters", 0))
            m.examples.labels(**labels).inc(now["examples"] - before.get("examples", 0))
            for outcome in JOIN_OUTCOMES:
                m.join.labels(**labels, outcome=outcome).inc(now[outcome] - before.get(outcome, 0))
            shard.exported = now
            open_impressions += shard.joiner.open_impressions
        m.open_impressions.labels(**labels).set(open_impressions)

    def _all_finished(self, consumer: EventConsumer) -> bool:
        if not self._partition_count:
            self._partition_count = consumer.partition_count(self.settings.impressions_topic)
        if not self._partition_count or any(not s.final_sent for s in self.shards.values()):
            return False
        try:
            states = read_checkpoints(self.redis, self.settings.namespace, self._partition_count)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return len(states) == self._partition_count and all(s["final_sent"] for s in states.values())

    def run(self) -> dict[str, Any]:
        opts = self.options
        if opts.metrics_port is not None and self.metrics.port is None:
            self.metrics.serve(opts.metrics_port, opts.metrics_host)
        if self.metrics.port is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(self.redis, self.settings.namespace, role="joiner", model=STAGE_LABEL,
                                        worker=opts.worker_id, url=metrics_url(opts.metrics_host, self.metrics.port),
                                        final_metrics=lambda: generate_latest(self.metrics.registry)).start()
        client = self.settings.kafka_client
        self._reader = make_consumer(self.kafka_bootstrap, f"{self.group_id}-read-back-{opts.worker_id}", client,
                                     self.settings.consumer_session_timeout_ms)
        consumer = make_consumer(self.kafka_bootstrap, self.group_id, client, self.settings.consumer_session_timeout_ms)
        self._producer = make_producer(self.kafka_bootstrap, client)
        self._consumer = consumer
        finished = False
        last_export = last_end_check = 0.0
        try:
            consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            while not self.stop_event.is_set():
                records = consumer.poll(opts.poll_records, 0.2)
                for p in self._dispatch(records) if records else ():
                    self._emit(self.shards[p])
                now = time.monotonic()
                if now - self._last_checkpoint >= opts.checkpoint_every_s:
                    self._checkpoint()
                if now - last_export >= 1.0:
                    self._export()
                    last_export = now
                # a worker left without partitions (the group shrank at the end) may stop too
                if opts.exit_at_end and now - last_end_check >= 0.5:
                    last_end_check = now
                    if all(s.final_sent for s in self.shards.values()):
                        self._checkpoint()
                        if self._all_finished(consumer):
                            finished = True
                            break
            self._checkpoint()
            self._export()
            summary = self.report(finished)  # before closing: the close hands the partitions back
        finally:
            consumer.close()  # its revoke callback checkpoints through the producer: close that after
            self._producer.close()
            self._reader.close()
            self._producer = self._consumer = self._reader = None
        return summary

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
                "digest": f"{totals.digest & _MASK64:016x}",
                "wall_seconds": time.monotonic() - self.started_at}

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        self.metrics.close()
        self.redis.close()


__all__ = ["JoinOptions", "JoinWorker", "checkpoint_key"]
