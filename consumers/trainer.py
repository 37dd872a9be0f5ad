"""The trainer worker (``streamrec train``): Kafka events → joined examples → model → Redis versions.

The loop: poll impressions and clicks, send malformed events to the dead-letter topic, join
(consumers/joiner.py), learn in mini-batches with progressive validation, and every N examples
or T seconds publish a version (consumers/version_store.py) and then commit the offsets it holds.

Exactly once, whatever instant the worker dies at: a version holds the model, the streaming
metrics, the joiner (open impressions, early clicks, labelled examples not yet trained) and the
next offset of every partition read, all taken at one point between two polls. On start the
worker loads the head version and seeks every partition to the offsets stored in it, never to
the group's committed offsets (those can lag a version when a worker dies between publish and
commit). So the events after a version's offsets are read again and nothing before them is, and
the digest of trained (impression id, label) pairs stored with each version proves it
(tests/test_trainer_faults.py).

Redis down: training goes on, publishing retries with exponential back-off and counts failures;
offsets are not committed meanwhile, and the next successful publish includes everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
import redis
from prometheus_client import generate_latest

from streamrec.consumers import example_messages
from streamrec.consumers.example_queue import KIND as EXAMPLES_KIND
from streamrec.consumers.example_queue import ExampleQueue
from streamrec.consumers.joiner import Example, JoinCounts, Joiner
from streamrec.consumers.learner import LearnerProcess
from streamrec.consumers.trainer_exporter import TrainerMetrics
from streamrec.consumers.worker_counters import Counters
from streamrec.models import spec_for
from streamrec.models.base import read_metadata
from streamrec.stream import events as ev
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.errors import StreamrecError
from streamrec.stream.feature_spec import SPEC_SAMPLE_ROWS, FeatureSpec, SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.kafka_client import (
    EventConsumer,
    EventProducer,
    TopicPartitionKey,
    make_consumer,
    make_producer,
)
from streamrec.stream.redis_connection import connect, retry_while_unavailable
from streamrec.stream.settings import Settings
from streamrec.stream.worker_registry import Heartbeat, metrics_url
from streamrec.versions.quality_gate import HELD_NON_FINITE, GateOptions, judge, should_roll_back
from streamrec.versions.store import Version, VersionConflict, VersionStore

log = logging.getLogger(__name__)
LAG_EVERY_S = 2.0
QUALITY_EVERY_S = 1.0


@dataclass(frozen=True)
class TrainerOptions:
    model: str = "wide_deep"
    worker_id: str = "worker-0"
    batch_size: int = 512
    window_s: float = 30.0
    publish_every_examples: int = 50_000
    publish_every_s: float = 5.0
    keep_versions: int = 5
    max_pending: int = 1_000_000
    window_examples: int = 10_000
    exit_at_end: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    poll_records: int = 5000
    seed: int = 0
    spec_options: SpecOptions = field(default_factory=SpecOptions)
    model_settings: dict[str, str] = field(default_factory=dict)  # --set KEY=VALUE (new models only)
    backoff_max_s: float = 30.0
    positives: str = "window"      # when the joiner releases a positive: at its click, or window end
    delta_every_s: float = 0.5     # publish the rows changed since the last delta this often (0: never)
    dense_every_s: float = 5.0     # ... and the dense weights with the first delta after this long
    delta_ttl_s: float = 300.0
    gate: GateOptions = field(default_factory=GateOptions)
    # read labelled examples from <ns>.examples (the join stage, consumers/join_worker.py) instead
    # of joining impressions and clicks here
    from_examples: bool = False


SLICE_BYTES = 1 << 20


def slices(records: list[Any], limit: int = SLICE_BYTES) -> Iterator[list[Any]]:
    """A poll's records in runs of about ``limit`` bytes. A poll can bring a whole replay's worth
    of event batches; joined and trained a slice at a time, the learner process gets batches
    while the worker decodes the next slice instead of idling through the whole poll (on the
    200k-row bench the learner waited about 2 s in 9)."""
    start, size = 0, 0
    for k, record in enumerate(records):
        size += len(record.value)
        if size >= limit:
            yield records[start : k + 1]
            start, size = k + 1, 0
    if start < len(records):
        yield records[start:]


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinities or NaN: an unknown time or metric is stored as null."""
    return value if np.isfinite(value) else None


class Trainer:
    def __init__(self, settings: Settings, options: TrainerOptions, *, kafka_bootstrap: str, redis_url: str,
                 on_publish: Callable[[int, dict[str, Any], np.ndarray | None], None] | None = None,
                 probe: list[tuple[str, str, dict[str, Any]]] | None = None,
                 on_delta: Callable[[dict[str, Any], np.ndarray | None], None] | None = None) -> None:
        self.settings = settings
        self.options = options
        self.kafka_bootstrap = kafka_bootstrap
        self.redis_url = redis_url
        self.on_publish = on_publish
        self.on_delta = on_delta
        # (user, item, features) examples the learner predicts at every version cut; their
        # predictions reach on_publish (a check that a stored version reproduces its trainer)
        self.probe = probe
        if options.from_examples:
            self.topics = {settings.examples_topic: EXAMPLES_KIND}
        else:
            self.topics = {settings.impressions_topic: "impressions", settings.clicks_topic: "clicks"}
        self._source_topic = next(iter(self.topics))
        self.group_id = f"streamrec-trainer-{settings.namespace}-{options.model}"
        self.store = VersionStore(connect(redis_url), settings.namespace, options.model)
        self.metrics = TrainerMetrics(options.model, options.worker_id)
        self._heartbeat: Heartbeat | None = None
        self.learner: LearnerProcess | None = None
        self.featurizer: Featurizer | None = None  # None until the model exists
        self._resume_from: Version | None = None
        self._pending_cut: dict[str, Any] | None = None
        self.joiner: Joiner | ExampleQueue = (
            ExampleQueue() if options.from_examples else Joiner(options.window_s, options.max_pending, options.positives))
        self.history: BehaviourHistory | None = None  # sequence models: recent clicks
        self.counters = Counters()
        self.positions: dict[TopicPartitionKey, int] = {}
        self.head: int | None = None
        self.versions_published = 0
        self.assigned: set[TopicPartitionKey] = set()
        self.assignments = 0  # group (re)joins, counted for operators and tests
        self._partition_count = 0
        self.stop_event = threading.Event()
        self._consumer: EventConsumer | None = None
        self._producer: EventProducer | None = None
        # What has reached Prometheus so far. It starts at zero, so after a resume the first export
        # adds the version's totals: counters count the stream, not the process.
        self._exported_join = JoinCounts()
        self._exported_examples = 0
        self._exported_dead = 0
        self._exported_events = {"impressions": 0, "clicks": 0}
        self._since_publish_examples = 0
        self._since_publish_events = 0
        self._last_publish_at = time.monotonic()
        self._next_publish_try = 0.0
        self._backoff_s = 0.0
        self.started_at = time.monotonic()
        self.first_record_at: float | None = None  # rates start here, after the group join
        self._examples_at_start = 0
        # label time (click, or window end) of the newest example trained: how fresh the model is
        self.newest_label_time = -np.inf
        self._pending_delta: dict[str, Any] | None = None
        self._last_delta_at = time.monotonic()
        self._last_dense_at = -np.inf
        self.deltas_published = 0
        self.rollbacks = 0
        self._live_meta: tuple[int | None, dict[str, Any] | None] = (None, None)

    # ------------------------------------------------------------------ resume

    def _redis_retry(self, what: str, action: Callable[[], Any]) -> Any:
        return retry_while_unavailable(
            what, action, self.stop_event, backoff_max_s=self.options.backoff_max_s,
            on_failure=lambda: self.metrics.publish_failures.labels(**self.metrics.labels).inc())

    def resume(self) -> int | None:
        """Read the head version (if any): joiner, counters and offsets now; the model and metrics
        go to the learner process in :meth:`_start_learning`."""
        head = self._redis_retry("reading the head version", self.store.head)
        if head is None:
            return None
        version = self._redis_retry(f"loading version {head}", lambda: self.store.load(head))
        meta = version.meta
        self.featurizer = Featurizer(FeatureSpec.from_json(read_metadata(version.weights)["spec"]))
        if version.joiner is not None:
            state = orjson.loads(version.joiner)
            was_examples = state.get("kind") == EXAMPLES_KIND
            if was_examples != self.options.from_examples:
                source = "<ns>.examples (train --from-examples)" if was_examples else "impressions and clicks"
                raise StreamrecError(
                    f"version {head} of {self.options.model} was trained from {source}; start this worker the "
                    "same way, or train a new namespace or model name")
            self.joiner = ExampleQueue.from_state(state) if was_examples else Joiner.from_state(state)
        if version.history is not None:
            self.history = BehaviourHistory.from_state(orjson.loads(version.history))
        self.counters = Counters(**meta["counters"])
        self.newest_label_time = meta.get("event_time") or -np.inf
        self.positions = {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): int(v) for k, v in meta["offsets"].items()}
        self.head = head
        self._resume_from = version
        self.metrics.live_version.labels(**self.metrics.labels).set(head)
        log.info("resuming %s from version %d: %d examples, offsets %s", self.options.model, head,
                 self.counters.examples, self.positions)
        return head

    def _start_learning(self) -> None:
        """Hand the resumed model to the learner process (it may still be importing torch)."""
        assert self.learner is not None
        if self._resume_from is not None and not self.learner.ready:
            self.learner.resume(self._resume_from.weights, self._resume_from.trainer, self.options.window_examples,
                                self._resume_from.number)
            self._resume_from = None
            self._set_probe()

    def _set_probe(self) -> None:
        if self.probe and self.learner is not None and self.featurizer is not None:
            users, items, features = zip(*self.probe)
            self.learner.set_probe(self.featurizer.build(list(users), list(items), list(features)))

    # ------------------------------------------------------------------ kafka

    def _on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        self.assigned = set(partitions)
        self.assignments += 1
        log.info("assigned %s", sorted(partitions))
        return {tp: self.positions[tp] for tp in partitions if tp in self.positions}

    def _on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        self.assigned -= set(partitions)

    def _dead_letter(self, raw: bytes, reason: str, topic: str, partition: int, offset: int) -> None:
        assert self._producer is not None
        # The source position makes a repeat after a crash recognisable downstream; the counter
        # itself is checkpointed, so it never counts one twice.
        self._producer.send(self.settings.dead_letter_topic, ev.dead_letter(raw, reason, f"{topic}:{partition}:{offset}"))
        self.counters.dead_letters += 1

    def _dispatch_examples(self, records: list[Any]) -> set[int]:
        """Queue the labelled examples of one poll (--from-examples); dead-letter what is not one."""
        assert isinstance(self.joiner, ExampleQueue)
        last: dict[tuple[str, int], int] = {}
        for record in records:
            last[(record.topic, record.partition)] = record.offset
            try:
                partition, examples, final = example_messages.decode(record.value)
            except ValueError as exc:
                self._dead_letter(record.value, str(exc), record.topic, record.partition, record.offset)
                continue
            self.joiner.add(partition, examples, final)
        for key, offset in last.items():
            self.positions[key] = offset + 1
        return set()

    def _dispatch(self, records: list[Any]) -> set[int]:
        """Decode, validate and join one poll's records (each a single event or an event batch);
        dead-letter the bad events. The hot loop of the worker: a JSON parse per message plus a
        few type checks per valid event (events.plainly_valid)."""
        assert isinstance(self.joiner, Joiner)
        offer, topics = self.joiner.offer_message, self.topics
        last: dict[tuple[str, int], int] = {}
        read = {"impression": 0, "click": 0, "watermark": 0}
        for record in records:
            topic, partition = record.topic, record.partition
            last[(topic, partition)] = record.offset
            taken, dead = offer(partition, topics.get(topic), record.value)
            for etype, n in taken.items():
                read[etype] += n
            for raw, problem in dead:
                self._dead_letter(raw, problem, topic, partition, record.offset)
        for etype, n in read.items():
            self.counters.count_read(etype, n)
        for key, offset in last.items():
            self.positions[key] = offset + 1
        return {partition for _topic, partition in last}

    # ------------------------------------------------------------------ learning

    def _ensure_model(self, examples: list[Example]) -> None:
        if self.featurizer is None:
            spec = self.options.spec_options.infer([e.features for e in examples[:SPEC_SAMPLE_ROWS]])
            self.featurizer = Featurizer(spec_for(self.options.model, spec))
        if self.featurizer.spec.history_length and self.history is None:
            spec = self.featurizer.spec
            self.history = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
        assert self.learner is not None
        if not self.learner.ready:
            self._start_learning()
        if not self.learner.ready:
            self.learner.init(self.options.model, self.featurizer.spec.to_json(), self.options.seed,
                              self.options.window_examples, self.options.model_settings)
            self._set_probe()

    def _train(self, examples: list[Example]) -> None:
        """Featurise here, learn in the learner process. Counters move at submission: every
        reader of model state (snapshot, quality) is answered after all batches sent before it."""
        if not examples:
            return
        self._ensure_model(examples)
        assert self.learner is not None and self.featurizer is not None
        labels = [e.label for e in examples]
        users, items = [e.user_id for e in examples], [e.item_id for e in examples]
        # each example sees the clicks before it; its own click joins the history after
        histories = self.history.before(users, items) if self.history is not None else None
        features = [e.features for e in examples]
        batch = self.featurizer.build(users, items, features, labels, histories)
        self.learner.learn(batch)
        if self.history is not None:
            self.history.after(users, items, labels, features)
        self.counters.count_examples([e.impression_id for e in examples], labels)
        self._since_publish_examples += len(examples)
        self.newest_label_time = max(self.newest_label_time, max(e.label_time for e in examples))

    def _train_ready(self, flush: bool = False) -> None:
        size = self.options.batch_size
        while self.joiner.ready >= size:
            self._train(self.joiner.take(size))
            # Every polled record is already in the joiner, and examples not yet trained are part
            # of its state, so a version may be cut between any two batches.
            if self._pending_cut is not None:
                self._complete(block=False)
            elif self._publish_due():
                self._cut()
        if flush:
            self._train(self.joiner.take())

    # ------------------------------------------------------------------ publishing

    def _cut(self) -> None:
        """Cut a version: take the worker's half (offsets, joiner, counters) now, between two
        batches, and ask the learner for its half (model, metrics) as of the same point. The worker
        goes on polling and joining while the learner serialises; :meth:`_complete` publishes."""
        assert self.learner is not None
        self._pending_cut = {
            "positions": dict(self.positions),
            "counters": asdict(self.counters),
            "join": asdict(self.joiner.counts),
            "joiner": orjson.dumps(self.joiner.state()),
            "history": None if self.history is None else orjson.dumps(self.history.state()),
            "joiner_watermark": _finite_or_none(self.joiner.watermark_time()),
            "event_time": _finite_or_none(self.newest_label_time),
            "since": (self._since_publish_examples, self._since_publish_events),
            "started": time.perf_counter(),
        }
        self.learner.request_snapshot()
        self._since_publish_examples = 0
        self._since_publish_events = 0
        self._last_publish_at = time.monotonic()

    def _complete(self, block: bool) -> int | None:
        """Publish the pending cut once the learner's half is there, then commit its offsets.
        On a Redis failure the cut is dropped and a new one is due after a back-off."""
        if self._pending_cut is None or self.learner is None:
            return None
        snapshot = self.learner.take_snapshot(block)
        if snapshot is None:
            return None
        cut, self._pending_cut = self._pending_cut, None
        meta = {
            "worker": self.options.worker_id,
            "examples_seen": cut["counters"]["examples"],
            "offsets": {f"{t}:{p}": o for (t, p), o in sorted(cut["positions"].items())},
            "joiner_watermark": cut["joiner_watermark"],
            "metrics": {k: _finite_or_none(v) for k, v in snapshot.quality.items()},
            "counters": cut["counters"],
            "join": cut["join"],
            "event_time": cut["event_time"],
            "lineage": snapshot.lineage,
            "delta_seq": snapshot.delta_seq,
        }
        try:
            live_meta = self._live_version_meta()
            # scorers were following this trainer's deltas on top of the live version
            following = self.head is not None and self._live_meta[0] == self.head
            decision = judge(meta, snapshot.finite, live_meta, self.options.gate)
            meta["gate"] = decision.as_meta()
            number = self.store.publish(parent=self.head, meta=meta, weights=snapshot.weights,
                                        trainer=snapshot.metrics, joiner=cut["joiner"],
                                        keep=self.options.keep_versions, promote=decision.promote,
                                        history=cut["history"])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.metrics.publish_failures.labels(**self.metrics.labels).inc()
            self._backoff_s = min(max(2 * self._backoff_s, 0.5), self.options.backoff_max_s)
            self._next_publish_try = time.monotonic() + self._backoff_s
            examples, events = cut["since"]
            self._since_publish_examples += examples
            self._since_publish_events += events
            log.warning("publish failed (%s); training goes on, next try in %.1fs", exc, self._backoff_s)
            return None
        self._backoff_s = 0.0
        self.head = number
        self.versions_published += 1
        self.metrics.record_publish(number, time.perf_counter() - cut["started"])
        if not decision.promote:
            self.metrics.versions_held.labels(**self.metrics.labels, reason=decision.reason).inc()
            log.warning("version %d of %s held by the quality gate (%s): %s", number, self.options.model,
                        decision.reason, decision.detail)
            drop = should_roll_back(meta["metrics"].get("auc_window") or np.nan, live_meta, self.options.gate)
            if following and (decision.reason == HELD_NON_FINITE or drop is not None):
                # Live stays, head moves past it: scorers stop applying this trainer's deltas and
                # serve the live version exactly again. That is a rollback of what was served.
                self._count_rollback(number, self._live_meta[0], drop or decision.detail)
                try:
                    self.store.record_event("rollback", number, self._live_meta[0], drop or decision.detail)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.warning("could not log the rollback event: %s", exc)
        assert self._consumer is not None
        try:
            self._consumer.commit(cut["positions"])
        except Exception as exc:  # noqa: BLE001 - the version is the source of truth; commits are for lag tools
            log.warning("offset commit after version %d failed: %s", number, exc)
        if self.on_publish is not None:
            self.on_publish(number, meta, snapshot.probe)
        return number

    def _live_version_meta(self) -> dict[str, Any] | None:
        """The live version's meta (cached while the pointer stays)."""
        live = self.store.live()
        if live != self._live_meta[0]:
            try:
                self._live_meta = (live, None if live is None else self.store.meta(live))
            except StreamrecError:  # pruned meanwhile
                self._live_meta = (None, None)
            if live is not None:
                self.metrics.served_version.labels(**self.metrics.labels).set(live)
        return self._live_meta[1]

    def _check_rollback(self) -> None:
        """Roll back when the served model (the trainer's newest version plus its deltas, while
        that version is live) has lost AUC sharply; see consumers/quality_gate.py."""
        gate = self.options.gate
        if not gate.enabled or self.head is None or self.learner is None or not self.learner.ready:
            return
        snapshot, _seconds = self.learner.latest_quality()
        if not snapshot["examples"] > 0:  # nothing posted by this learner yet
            return
        try:
            live_meta = self._live_version_meta()
            if self._live_meta[0] != self.head or self.store.pinned():
                return
            reason = should_roll_back(snapshot["auc_window"], live_meta, gate)
            if reason is None:
                return
            target = self.store.previous_promoted(self.head)
            if target is None:
                return
            self.store.set_live(target, pin=False, kind="rollback", reason=reason)
        except (redis.ConnectionError, redis.TimeoutError, StreamrecError) as exc:
            log.warning("rollback check failed: %s", exc)
            return
        self._count_rollback(self.head, target, reason)

    def _count_rollback(self, source: int | None, target: int | None, reason: str) -> None:
        self.rollbacks += 1
        self.metrics.rollbacks.labels(**self.metrics.labels).inc()
        log.warning("rolled %s back from version %s (with its deltas) to version %s: %s", self.options.model,
                    source, target, reason)

    def _delta_due(self) -> bool:
        every = self.options.delta_every_s
        return (every > 0 and self.learner is not None and self.learner.ready and self._pending_delta is None
                and time.monotonic() - self._last_delta_at >= every)

    def _request_delta(self) -> None:
        assert self.learner is not None
        # Examples waiting for a full batch would wait past this delta: train them now, in
        # batches of the usual size (a resumed worker may hold thousands released before its cut).
        self._train_ready(flush=True)
        now = time.monotonic()
        dense = now - self._last_dense_at >= self.options.dense_every_s
        # every click before the watermark is in this delta (positives="click"); see bench/freshness.py
        self._pending_delta = {"event_time": _finite_or_none(self.newest_label_time),
                               "examples_seen": self.counters.examples,
                               "watermark": _finite_or_none(self.joiner.watermark_time()), "dense": dense}
        self.learner.request_delta(dense)
        self._last_delta_at = now
        if dense:
            self._last_dense_at = now

    def _complete_delta(self, block: bool) -> None:
        if self._pending_delta is None or self.learner is None:
            return
        delta = self.learner.take_delta(block)
        if delta is None:
            return
        pending, self._pending_delta = self._pending_delta, None
        meta = {**pending, "base_version": delta.base_version, "worker": self.options.worker_id}
        try:
            self.store.publish_delta(lineage=delta.lineage, seq=delta.seq, meta=meta, weights=delta.weights,
                                     ttl_s=self.options.delta_ttl_s)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # A missing delta is a gap that scorers see: they reload the next full version.
            self.metrics.publish_failures.labels(**self.metrics.labels).inc()
            log.debug("delta %s:%d not published: %s", delta.lineage, delta.seq, exc)
            return
        self.deltas_published += 1
        self.metrics.deltas.labels(**self.metrics.labels).inc()
        self.metrics.delta_bytes.labels(**self.metrics.labels).inc(len(delta.weights))
        if self.on_delta is not None:
            self.on_delta({**meta, "lineage": delta.lineage, "seq": delta.seq}, delta.probe)

    def publish(self) -> int | None:
        """Publish everything up to now and wait for it; None if nothing was published (no model,
        nothing new, or Redis unavailable: then a retry is scheduled)."""
        if self.learner is None or not self.learner.ready:
            return None
        if self._pending_cut is not None:
            self._complete(block=True)
        if not self._unpublished:
            return None
        self._cut()
        return self._complete(block=True)

    @property
    def _unpublished(self) -> bool:
        """Events read or examples trained since the last cut."""
        return bool(self._since_publish_examples or self._since_publish_events)

    def _publish_due(self) -> bool:
        if self.learner is None or not self.learner.ready or self._pending_cut is not None:
            return False
        if time.monotonic() < self._next_publish_try or not self._unpublished:
            return False
        return (self._since_publish_examples >= self.options.publish_every_examples
                or time.monotonic() - self._last_publish_at >= self.options.publish_every_s)

    # ------------------------------------------------------------------ metrics export

    def _export(self, consumer: EventConsumer, *, lag: bool, exact: bool = False) -> None:
        """Update the Prometheus metrics; ``exact`` waits for the learner (used at the end)."""
        m, labels = self.metrics, self.metrics.labels
        if self.counters.examples and self.learner is not None and self.learner.ready:
            snapshot, _seconds = self.learner.quality() if exact else self.learner.latest_quality()
            if snapshot["examples"] > 0:
                m.record_quality(snapshot)
        counts = asdict(self.joiner.counts)
        previous = asdict(self._exported_join)
        m.record_join({k: counts[k] - previous[k] for k in counts if k not in ("impressions", "clicks")})
        self._exported_join = JoinCounts(**counts)
        m.examples.labels(**labels).inc(self.counters.examples - self._exported_examples)
        self._exported_examples = self.counters.examples
        m.dead_letters.labels(**labels).inc(self.counters.dead_letters - self._exported_dead)
        self._exported_dead = self.counters.dead_letters
        for kind, now in (("impressions", self.counters.impressions_read), ("clicks", self.counters.clicks_read)):
            topic = self.settings.impressions_topic if kind == "impressions" else self.settings.clicks_topic
            m.events.labels(**labels, topic=topic).inc(now - self._exported_events[kind])
            self._exported_events[kind] = now
        m.open_impressions.labels(**labels).set(self.joiner.open_impressions)
        elapsed = time.monotonic() - (self.first_record_at or self.started_at)
        m.examples_per_second.labels(**labels).set(self._examples_this_run / elapsed if elapsed > 0 else 0.0)
        if lag and self.assigned:
            try:
                ends = consumer.end_offsets(sorted(self.assigned), cached=True)
            except Exception as exc:  # noqa: BLE001 - lag is advisory; a broker hiccup must not stop training
                log.debug("end offsets unavailable: %s", exc)
                return
            per_topic: dict[str, int] = {}
            for tp, end in ends.items():
                if end < 0:
                    continue
                per_topic[tp[0]] = per_topic.get(tp[0], 0) + max(0, end - self.positions.get(tp, 0))
            for topic, value in per_topic.items():
                m.lag.labels(**labels, topic=topic).set(value)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Train until stopped (or, with ``exit_at_end``, until every partition's final watermark)."""
        opts = self.options
        if opts.metrics_port is not None and self.metrics.port is None:
            self.metrics.serve(opts.metrics_port, opts.metrics_host)
        if self.metrics.port is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(self.store.client, self.settings.namespace, role="trainer",
                                        model=opts.model, worker=opts.worker_id,
                                        url=metrics_url(opts.metrics_host, self.metrics.port),
                                        final_metrics=lambda: generate_latest(self.metrics.registry)).start()
        # The learner process imports torch while this one resumes and joins the group.
        self.learner = LearnerProcess()
        self.resume()
        self._examples_at_start = self.counters.examples
        consumer = make_consumer(self.kafka_bootstrap, self.group_id, self.settings.kafka_client,
                                 self.settings.consumer_session_timeout_ms)
        producer = make_producer(self.kafka_bootstrap, self.settings.kafka_client)
        self._consumer, self._producer = consumer, producer
        self.started_at = time.monotonic()
        last_quality = last_lag = 0.0
        finished = False
        # A poll waits until it has poll_records or the timeout: short when deltas are on, so a
        # quiet stream's clicks are not held back a whole poll before the next delta.
        poll_timeout = min(0.2, opts.delta_every_s / 4) if opts.delta_every_s > 0 else 0.2
        try:
            consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            self._start_learning()
            while not self.stop_event.is_set():
                records = consumer.poll(opts.poll_records, poll_timeout)
                if records:
                    if self.first_record_at is None:
                        self.first_record_at = time.monotonic()
                    self._since_publish_events += len(records)
                    for part in slices(records):
                        if opts.from_examples:
                            self._dispatch_examples(part)
                        else:
                            self.joiner.advance(self._dispatch(part))
                        self._train_ready()
                if opts.exit_at_end and self._stream_finished(consumer):
                    self.joiner.advance()
                    self._train_ready(flush=True)
                    finished = True
                    break
                if self._pending_cut is not None:
                    self._complete(block=False)
                elif self._publish_due():
                    self._cut()
                if self._pending_delta is not None:
                    self._complete_delta(block=False)
                if self._delta_due():
                    self._request_delta()
                now = time.monotonic()
                if now - last_quality >= QUALITY_EVERY_S:
                    lag = now - last_lag >= LAG_EVERY_S
                    self._export(consumer, lag=lag)
                    self._check_rollback()
                    last_quality = now
                    last_lag = now if lag else last_lag
            self._complete_delta(block=True)
            # Final version: at the end of the stream, or on a clean stop (SIGTERM, Ctrl-C).
            if self.featurizer is not None and (self._unpublished or self._pending_cut is not None):
                self._final_publish()
            self._export(consumer, lag=True, exact=True)
        finally:
            producer.close()
            consumer.close()
            self._consumer = self._producer = None
        return self.report(finished)

    def _stream_finished(self, consumer: EventConsumer) -> bool:
        """Every partition of the topics has reached its final watermark in this worker.

        Every partition, not only the assigned ones: a worker restarted after a crash is first
        given part of the partitions while the group still counts its dead predecessor, and
        those may already be finished in the state it resumed. (So --exit-at-end is for one
        worker replaying a log; workers of a larger group run until stopped.)"""
        if not self.assigned:
            return False
        if not self._partition_count:
            self._partition_count = consumer.partition_count(self._source_topic)
        return bool(self._partition_count) and self.joiner.finished(range(self._partition_count))

    def _final_publish(self) -> None:
        while True:
            self.publish()
            if self._pending_cut is None and not self._unpublished:
                return
            if self._stop_publishing():
                log.error("stopping with %d examples not in any version: Redis stayed unavailable",
                          self._since_publish_examples)
                return
            time.sleep(max(0.05, self._next_publish_try - time.monotonic()))

    def _stop_publishing(self) -> bool:
        # A clean stop waits for Redis at most one back-off period past the first failure.
        return self.stop_event.is_set() and self._backoff_s >= self.options.backoff_max_s

    @property
    def _examples_this_run(self) -> int:
        return self.counters.examples - self._examples_at_start

    def report(self, finished: bool) -> dict[str, Any]:
        if self.learner is not None and self.learner.ready:
            snap, learn_seconds = self.learner.quality()
        else:
            snap, learn_seconds = {k: float("nan") for k in ("auc", "auc_error_bound", "auc_window", "logloss",
                                                             "normalized_entropy", "calibration")}, 0.0
        wall = time.monotonic() - (self.first_record_at or self.started_at)
        return {
            "model": self.options.model,
            "examples": self.counters.examples,
            "examples_this_run": self._examples_this_run,
            "auc": snap["auc"], "auc_error_bound": snap["auc_error_bound"], "auc_window": snap["auc_window"],
            "logloss": snap["logloss"], "normalized_entropy": snap["normalized_entropy"],
            "calibration": snap["calibration"],
            "examples_per_second": self._examples_this_run / wall if wall > 0 else float("nan"),
            "learn_examples_per_second": self._examples_this_run / learn_seconds if learn_seconds else float("nan"),
            "wall_seconds": wall,
            "versions_published": self.versions_published,
            "deltas_published": self.deltas_published,
            "rollbacks": self.rollbacks,
            "head_version": self.head,
            "dead_letters": self.counters.dead_letters,
            "events_consumed": self.counters.impressions_read + self.counters.clicks_read,
            "join": asdict(self.joiner.counts),
            "digest": f"{self.counters.digest:016x}",
            "finished": finished,
        }

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        if self.learner is not None:
            self.learner.close()
            self.learner = None
        self.metrics.close()
        self.store.client.close()


__all__ = ["Trainer", "TrainerOptions", "VersionConflict"]
