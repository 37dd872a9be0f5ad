"""How a trainer's model reaches Redis: version cuts, the quality gate, rollbacks and deltas.

A version is cut in two halves taken at the same point between two batches: the worker's half
(offsets, example source, histories, counters: a :class:`WorkerCut`) at once, the learner's half
(model, streaming metrics) asked of the learner process, which answers after every batch sent
before the request. The worker goes on polling while the learner serialises; :meth:`complete`
publishes once the learner's half is there and then commits the offsets the version holds.

The gate (versions/quality_gate.py) decides whether a new version goes live, on the evidence of
the learner's paired window: the learning model and a frozen copy of the live version predicting
the same examples. The publisher keeps that copy in step with the live pointer (its own
promotions and an operator's rollbacks, pins and promotions alike). While scorers follow the
trainer's newest version plus its deltas, the learning model falling clearly behind the frozen
live version cuts a version at once, which the gate holds: scorers serve the live version exactly. Redis down: publishing retries after a :class:`Backoff`, training goes on,
and the next successful version includes everything since the last one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from streamrec.consumers.example_source import JoinCounts
from streamrec.consumers.learner import Delta, LearnerProcess, Snapshot
from streamrec.consumers.trainer_exporter import TrainerExporter
from streamrec.consumers.worker_counters import Counters
from streamrec.stream.errors import StreamrecError
from streamrec.stream.kafka_client import TopicPartitionKey
from streamrec.stream.redis_connection import Backoff
from streamrec.versions.meta import DeltaMeta, VersionMeta, finite_or_none
from streamrec.versions.quality_gate import GateOptions, judge, should_roll_back
from streamrec.versions.store import MissingShard, StagedShards, VersionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOptions:
    """When versions and deltas are published, how many versions are kept, and the gate."""

    publish_every_examples: int
    publish_every_s: float
    keep_versions: int
    delta_every_s: float
    dense_every_s: float
    gate: GateOptions
    worker_id: str
    delta_ttl_s: float = 300.0
    backoff_max_s: float = 30.0
    paired_window: int = 10_000  # examples the learning model and the live version are compared on


@dataclass(frozen=True)
class WorkerCut:
    """The worker's half of a version, taken between two batches."""

    positions: dict[TopicPartitionKey, int]  # next offset of every partition read
    counters: Counters
    join: JoinCounts
    source_state: bytes                      # JSON of the example source
    history: bytes | None                    # JSON of the behaviour histories (sequence models)
    watermark: float | None                  # every label before it is in the version
    event_time: float | None                 # label time of the newest example trained
    ingested_at: float | None                # wall-clock time that example was learned


@dataclass(frozen=True)
class _PendingCut:
    worker: WorkerCut
    examples: int   # examples and events the cut covers, handed back if publishing fails
    events: int
    started: float


OnPublish = Callable[[int, VersionMeta, "np.ndarray | None"], None]
OnDelta = Callable[[DeltaMeta, "np.ndarray | None"], None]


class VersionPublisher:
    """Cuts, publishes and gates one trainer's versions and deltas; see the module docstring."""

    def __init__(self, store: VersionStore, options: PublishOptions, exporter: TrainerExporter,
                 commit: Callable[[dict[TopicPartitionKey, int]], None], *,
                 on_publish: OnPublish | None = None, on_delta: OnDelta | None = None) -> None:
        self.store, self.options, self.exporter = store, options, exporter
        self._commit = commit
        self.on_publish, self.on_delta = on_publish, on_delta
        self.head: int | None = None
        self.versions_published = 0
        self.deltas_published = 0
        self.rollbacks = 0
        self.unpublished_examples = 0  # trained since the last cut
        self.unpublished_events = 0    # read since the last cut
        self.learned_since_delta = 0   # examples sent to the learner since the last delta
        self._pending: _PendingCut | None = None
        self._pending_delta: DeltaMeta | None = None
        self._backoff = Backoff(max_s=options.backoff_max_s)
        self._last_publish_at = time.monotonic()
        self._last_delta_at = time.monotonic()
        self._last_dense_at = -np.inf
        self._live: tuple[int | None, VersionMeta | None] = (None, None)
        self._labels = exporter.labels
        self._rollback_reason: str | None = None  # set: cut at once, so the gate can hold what is served
        self._promoted_by_gate: int | None = None  # the newest version this trainer's gate made live

    # ------------------------------------------------------------------ versions

    @property
    def unpublished(self) -> bool:
        """Events read or examples trained since the last cut."""
        return bool(self.unpublished_examples or self.unpublished_events)

    @property
    def cutting(self) -> bool:
        return self._pending is not None

    def due(self, examples: float | None = None) -> bool:
        """A version is due; ``examples``: learned since the last cut (default: by this worker)."""
        examples = self.unpublished_examples if examples is None else examples
        if self._pending is not None or not self._backoff.ready() or not (examples > 0 or self.unpublished):
            return False
        return (self._rollback_reason is not None or examples >= self.options.publish_every_examples
                or time.monotonic() - self._last_publish_at >= self.options.publish_every_s)

    def cut(self, learner: LearnerProcess, worker: WorkerCut) -> None:
        """Take the worker's half now and ask the learner for its half as of the same batch."""
        self._pending = _PendingCut(worker, self.unpublished_examples, self.unpublished_events, time.perf_counter())
        self.request_snapshot(learner, worker)
        self.unpublished_examples = self.unpublished_events = 0
        self._last_publish_at = time.monotonic()

    def request_snapshot(self, learner: LearnerProcess, worker: WorkerCut) -> None:
        """Ask the learner for its half of the version ``worker`` is the worker's half of."""
        learner.request_snapshot()

    def complete(self, learner: LearnerProcess, block: bool) -> int | None:
        """Publish the pending cut once the learner's half is there, then commit its offsets.
        On a Redis failure the cut is dropped and a new one is due after the back-off."""
        if self._pending is None:
            return None
        snapshot = learner.take_snapshot(block)
        if snapshot is None:
            return None
        pending, self._pending = self._pending, None
        return self.publish_cut(learner, pending, pending.worker, snapshot)

    def publish_cut(self, learner: LearnerProcess, pending: _PendingCut, cut: WorkerCut, snapshot: Snapshot,
                    shards: StagedShards | None = None) -> int | None:
        """Publish one version: ``cut`` (the worker half) with the learner's ``snapshot`` (or, from
        ranks, with the ``shards`` they staged)."""
        meta = VersionMeta(
            worker=self.options.worker_id, examples_seen=cut.counters.examples,
            offsets={f"{t}:{p}": o for (t, p), o in sorted(cut.positions.items())},
            joiner_watermark=cut.watermark, event_time=cut.event_time, ingested_at=cut.ingested_at,
            metrics={k: finite_or_none(v) for k, v in snapshot.quality.items()},
            counters=dataclasses.asdict(cut.counters), join=dataclasses.asdict(cut.join),
            lineage=snapshot.lineage, delta_seq=snapshot.delta_seq)
        try:
            live_meta = self.live_meta()
            # scorers were following this trainer's deltas on top of the live version
            following = self.head is not None and self._live[0] == self.head
            decision = judge(meta, snapshot.finite, live_meta, self.options.gate, following=following)
            meta = dataclasses.replace(meta, gate=decision.as_record())
            number = self.store.publish(parent=self.head, meta=meta, weights=b"" if shards else snapshot.weights,
                                        quality_state=snapshot.metrics, source_state=cut.source_state,
                                        keep=self.options.keep_versions, promote=decision.promote,
                                        history=cut.history, shards=shards)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.exporter.publish_failures.labels(**self._labels).inc()
            delay = self._backoff.failed()
            self.unpublished_examples += pending.examples
            self.unpublished_events += pending.events
            log.warning("publish failed (%s); training goes on, next try in %.1fs", exc, delay)
            return None
        self._backoff.succeeded()
        self._rollback_reason = None
        self.head = number
        self.versions_published += 1
        if decision.promote:
            self._promoted_by_gate = number
            try:
                self.live_meta()  # the new version, unless an operator pinned another
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("could not read the live pointer after version %d: %s", number, exc)
        compared = int(snapshot.quality.get("paired_examples") or 0)
        self.sync_reference(learner, number, snapshot.weights,
                            moved_on=decision.promote and compared >= self.options.gate.min_paired)
        self.exporter.record_publish(time.perf_counter() - pending.started)
        if not decision.promote:
            self._held(number, decision.reason, decision.detail, meta, live_meta, following)
        try:
            self._commit(cut.positions)
        except Exception as exc:  # noqa: BLE001 - the version is the source of truth; commits are for lag tools
            log.warning("offset commit after version %d failed: %s", number, exc)
        if self.on_publish is not None:
            self.on_publish(number, meta, snapshot.probe)
        return number

    def _held(self, number: int, reason: str, detail: str, meta: VersionMeta, live_meta: VersionMeta | None,
              following: bool) -> None:
        self.exporter.versions_held.labels(**self._labels, reason=reason).inc()
        log.warning("version %d of %s held by the quality gate (%s): %s", number, self.store.model, reason, detail)
        drop = should_roll_back(meta.metrics, live_meta, self.options.gate)
        if following:
            # Head moves past live: scorers stop applying this trainer's deltas and serve a fixed
            # version exactly again. That is a rollback of what was served: to the frozen version
            # the gate compared with, proven better on the same examples, where that is not live.
            target = (meta.gate.against or {}).get("version") if meta.gate is not None else None
            try:
                if target is not None and target != self._live[0] and not self.store.pinned():
                    self.store.set_live(target, pin=False, kind="rollback", reason=drop or detail)
                    self.live_meta()
                else:
                    self.store.record_event("rollback", number, self._live[0], drop or detail)
            except (redis.ConnectionError, redis.TimeoutError, StreamrecError) as exc:
                log.warning("could not complete the rollback: %s", exc)
            self._count_rollback(number, self._live[0], drop or detail)

    def publish_now(self, learner: LearnerProcess, take_cut: Callable[[], WorkerCut]) -> int | None:
        """Publish everything up to now and wait for it; None if nothing was published (nothing
        new, or Redis unavailable: then a retry is scheduled)."""
        if self._pending is not None:
            self.complete(learner, block=True)
        if not self.unpublished:
            return None
        self.cut(learner, take_cut())
        return self.complete(learner, block=True)

    def publish_final(self, learner: LearnerProcess, take_cut: Callable[[], WorkerCut],
                      stopping: Callable[[], bool]) -> None:
        """The last version, at the end of the stream or on a clean stop; a stopping worker waits
        for Redis at most one back-off period past the longest."""
        while True:
            self.publish_now(learner, take_cut)
            if self._pending is None and not self.unpublished:
                return
            if stopping() and self._backoff.exhausted:
                log.error("stopping with %d examples not in any version: Redis stayed unavailable",
                          self.unpublished_examples)
                return
            time.sleep(max(0.05, self._backoff.seconds_to_next_try))

    def live_meta(self) -> VersionMeta | None:
        """The live version's meta (cached while the pointer stays)."""
        live = self.store.live()
        if live != self._live[0]:
            try:
                self._live = (live, None if live is None else self.store.meta(live))
            except StreamrecError:  # pruned meanwhile
                self._live = (None, None)
        return self._live[1]

    @property
    def live_version(self) -> int | None:
        return self._live[0]

    # ------------------------------------------------------------------ rollback

    def check_rollback(self, learner: LearnerProcess) -> None:
        """Roll back when the served model (the trainer's newest version plus its deltas, while
        that version is live) has lost AUC sharply."""
        gate = self.options.gate
        if not gate.enabled or self.head is None or not learner.ready:
            return
        snapshot, _seconds = learner.latest_quality()
        try:
            live_meta = self.live_meta()
            self.sync_reference(learner)  # an operator may have moved the live pointer
            if not snapshot["examples"] > 0 or self._live[0] != self.head or self.store.pinned():
                return
        except (redis.ConnectionError, redis.TimeoutError, StreamrecError) as exc:
            log.warning("rollback check failed: %s", exc)
            return
        reason = should_roll_back(snapshot, live_meta, gate)
        if reason is not None and self._rollback_reason is None:
            # The next cut is judged on the same evidence and held: scorers stop applying the
            # deltas and serve the live version exactly (counted as a rollback in _held).
            log.warning("%s: cutting a version now so the gate can hold it", reason)
            self._rollback_reason = reason

    def sync_reference(self, learner: LearnerProcess, published: int | None = None,
                       weights: bytes | None = None, moved_on: bool = False) -> None:
        """Make the learner compare with the live version (``weights``: those of ``published``,
        just written, saving a read back from Redis). After the gate's own promotion the frozen
        copy moves on only once it has been compared on enough examples (``moved_on``); a live
        pointer someone else moved is followed at once."""
        live = self.reference_due(learner, moved_on)
        if live is None:
            return
        if live == published and weights is not None:
            learner.set_reference(live, weights, self.options.paired_window)
            return
        try:
            version = self.store.load(live, with_state=False)
        except (redis.ConnectionError, redis.TimeoutError, StreamrecError) as exc:
            log.warning("could not load live version %s to compare with: %s", live, exc)
            return
        learner.set_reference(live, version.weights, self.options.paired_window, shards=version.shards)

    def reference_due(self, learner: LearnerProcess, moved_on: bool) -> int | None:
        """The live version the learner should compare with from now on, or None to keep what it has."""
        live = self._live[0]
        if not self.options.gate.enabled or not learner.ready or live is None or learner.reference_version == live:
            return None
        if live == self._promoted_by_gate and learner.reference_version is not None and not moved_on:
            return None
        return live

    def _count_rollback(self, source: int | None, target: int | None, reason: str) -> None:
        self.rollbacks += 1
        self.exporter.rollbacks.labels(**self._labels).inc()
        log.warning("rolled %s back from version %s (with its deltas) to version %s: %s", self.store.model,
                    source, target, reason)

    # ------------------------------------------------------------------ deltas

    def delta_due(self, learner: LearnerProcess, waiting: int = 0) -> bool:
        """A delta is due every ``delta_every_s`` while there is something new: examples learned
        since the last one, or ``waiting`` examples the trainer would flush into it. An idle
        trainer publishes none."""
        every = self.options.delta_every_s
        return (every > 0 and learner.ready and self._pending_delta is None
                and bool(self.learned_since_delta or waiting)
                and time.monotonic() - self._last_delta_at >= every)

    def request_delta(self, learner: LearnerProcess, draft: DeltaMeta) -> None:
        """Ask the learner for the rows changed since the previous delta; ``draft`` holds the
        worker's side (event time, watermark, examples), taken after every ready example was sent."""
        now = time.monotonic()
        dense = now - self._last_dense_at >= self.options.dense_every_s
        self._pending_delta = dataclasses.replace(draft, dense=dense, worker=self.options.worker_id)
        learner.request_delta(dense)
        self.learned_since_delta = 0
        self._last_delta_at = now
        if dense:
            self._last_dense_at = now

    def complete_delta(self, learner: LearnerProcess, block: bool) -> None:
        if self._pending_delta is None:
            return
        delta = learner.take_delta(block)
        if delta is None:
            return
        meta = dataclasses.replace(self._pending_delta, base_version=delta.base_version, lineage=delta.lineage,
                                   seq=delta.seq)
        self._pending_delta = None
        try:
            self.store_delta(meta, delta)
        except (redis.ConnectionError, redis.TimeoutError, MissingShard) as exc:
            # A missing delta is a gap that scorers see: they reload the next full version.
            self.exporter.publish_failures.labels(**self._labels).inc()
            log.debug("delta %s:%d not published: %s", delta.lineage, delta.seq, exc)
            return
        self.deltas_published += 1
        self.exporter.deltas.labels(**self._labels).inc()
        self.exporter.delta_bytes.labels(**self._labels).inc(len(delta.weights))
        if self.on_delta is not None:
            self.on_delta(meta, delta.probe)

    def store_delta(self, meta: DeltaMeta, delta: Delta) -> None:
        """Write the delta and announce it."""
        self.store.publish_delta(meta, delta.weights, ttl_s=self.options.delta_ttl_s)

    @property
    def delta_pending(self) -> bool:
        return self._pending_delta is not None


__all__ = ["OnDelta", "OnPublish", "PublishOptions", "VersionPublisher", "WorkerCut"]
