"""The trainer worker (``streamrec train``): Kafka events → labelled examples → model → Redis versions.

The loop: poll, send malformed events to the dead-letter topic, turn messages into labelled
examples (the example source: the joiner, or the join stage's ``<ns>.examples``), featurize here
and learn in the learner process with progressive validation, and hand versions and deltas to
the :class:`~streamrec.consumers.version_publisher.VersionPublisher`.

Exactly once, whatever instant the worker dies at: a version holds the model, the streaming
metrics, the example source (open impressions, early clicks, examples not yet trained) and the
next offset of every partition read, all as of one point between two batches. On start the
worker loads the head version and seeks every partition to the offsets stored in it, never to
the group's committed offsets (those can lag a version when a worker dies between publish and
commit). The digest of trained (impression id, label) pairs stored with each version proves it
(tests/test_trainer_faults.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamrec.consumers.example_queue import ExampleQueue
from streamrec.consumers.example_source import Example, ExampleSource
from streamrec.consumers.joiner import Joiner
from streamrec.consumers.kafka_worker import KafkaWorker, WorkerIdentity
from streamrec.consumers.learner import LearnerProcess
from streamrec.consumers.source_shards import source_from_state, source_kind
from streamrec.consumers.trainer_exporter import TrainerExporter, TrainerReadings
from streamrec.consumers.version_publisher import (
    OnDelta,
    OnPublish,
    PublishOptions,
    VersionPublisher,
    WorkerCut,
)
from streamrec.consumers.worker_counters import Counters
from streamrec.models import history_ttl_seconds, spec_for
from streamrec.models.base import read_metadata
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.errors import StreamrecError
from streamrec.stream.feature_blocks import feature_dicts, gather_columns, is_row_ref
from streamrec.stream.feature_spec import SPEC_SAMPLE_ROWS, FeatureSpec, SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.kafka_client import Record, TopicPartitionKey
from streamrec.stream.redis_connection import connect, retry_while_unavailable
from streamrec.stream.settings import Settings
from streamrec.stream.sparse_batch import SparseBatch
from streamrec.versions.meta import DeltaMeta, finite_or_none
from streamrec.versions.quality_gate import GateOptions
from streamrec.versions.store import Version, VersionConflict, VersionStore

log = logging.getLogger(__name__)
LAG_EVERY_S = 2.0
QUALITY_EVERY_S = 1.0
RATE_WINDOW_S = 10.0  # /metrics' examples per second: over this much recent time, so it falls to 0 when idle
SLICE_BYTES = 1 << 20
FEATURIZE_BATCHES = 16  # full batches featurized in one go (the learner still gets them one by one)
# Settings a trainer takes from streamrec.stream.settings.Settings, under the same names.
SETTINGS_FIELDS = ("model", "batch_size", "attribution_window_s", "publish_every_examples", "publish_every_s",
                   "keep_versions", "max_pending_impressions", "window_examples", "metrics_port", "metrics_host",
                   "positives", "delta_every_s", "dense_every_s", "max_event_time_ahead_s", "search", "search_live",
                   "search_sample", "search_budget", "search_later_every", "search_change_z")


@dataclass(frozen=True)
class TrainerOptions:
    """One trainer's options. Build them with :meth:`from_settings`: every setting then has the
    one name and default of :class:`~streamrec.stream.settings.Settings`."""

    model: str
    batch_size: int
    attribution_window_s: float
    publish_every_examples: int
    publish_every_s: float
    keep_versions: int
    max_pending_impressions: int
    window_examples: int
    metrics_port: int | None
    metrics_host: str
    positives: str            # when the joiner releases a positive: at its click, or window end
    delta_every_s: float      # publish the rows changed since the last delta this often (0: never)
    dense_every_s: float      # ... and the dense weights with the first delta after this long
    max_event_time_ahead_s: float  # events further ahead of their partition's time are dead-lettered
    search: bool              # search settings, crosses and counts online (models/online_search.py)
    search_live: int
    search_sample: int
    search_budget: float
    search_later_every: int
    search_change_z: float
    gate: GateOptions
    worker_id: str = "worker-0"
    exit_at_end: bool = False
    poll_records: int = 5000
    seed: int = 0
    spec_options: SpecOptions = field(default_factory=SpecOptions)
    model_settings: dict[str, str] = field(default_factory=dict)  # --set KEY=VALUE (new models only)
    backoff_max_s: float = 30.0
    delta_ttl_s: float = 300.0
    # read labelled examples from <ns>.examples (the join stage) instead of joining impressions
    # and clicks here
    from_examples: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainerOptions:
        values: dict[str, Any] = {name: getattr(settings, name) for name in SETTINGS_FIELDS}
        values["gate"] = GateOptions(settings.gate, settings.gate_margin, settings.rollback_drop)
        return cls(**{**values, **overrides})

    def search_settings(self) -> dict[str, float] | None:
        """What the learner's online search is given (None: learn the configuration as it is)."""
        return ({"live": self.search_live, "sample": self.search_sample, "budget": self.search_budget,
                 "later_every": self.search_later_every, "change_z": self.search_change_z}
                if self.search else None)

    def publish_options(self) -> PublishOptions:
        return PublishOptions(self.publish_every_examples, self.publish_every_s, self.keep_versions,
                              self.delta_every_s, self.dense_every_s, self.gate, self.worker_id,
                              delta_ttl_s=self.delta_ttl_s, backoff_max_s=self.backoff_max_s,
                              paired_window=self.window_examples)


def slices(records: Sequence[Record], limit: int = SLICE_BYTES) -> Iterator[Sequence[Record]]:
    """A poll's records in runs of about ``limit`` bytes: joined and trained a slice at a time,
    the learner process gets batches while the worker decodes the next slice, instead of idling
    through a poll that brought a whole replay's worth of event batches."""
    start, size = 0, 0
    for k, record in enumerate(records):
        size += len(record.value)
        if size >= limit:
            yield records[start : k + 1]
            start, size = k + 1, 0
    if start < len(records):
        yield records[start:]


class Trainer(KafkaWorker):
    """Reads events (or labelled examples), learns in a learner process, publishes versions and
    deltas of one model; ``run()`` until stopped or, with ``exit_at_end``, the stream's end."""

    role = "trainer"
    learner_class: type[LearnerProcess] = LearnerProcess

    def __init__(self, settings: Settings, options: TrainerOptions, *, kafka_bootstrap: str, redis_url: str,
                 on_publish: OnPublish | None = None, probe: list[tuple[str, str, dict[str, Any]]] | None = None,
                 on_delta: OnDelta | None = None) -> None:
        if options.from_examples:
            topics = {settings.examples_topic: ExampleQueue.kind}
        else:
            topics = {settings.impressions_topic: "impressions", settings.clicks_topic: "clicks"}
        client = connect(redis_url)
        super().__init__(settings, WorkerIdentity(options.worker_id, options.metrics_port, options.metrics_host),
                         kafka_bootstrap=kafka_bootstrap, redis_client=client,
                         exporter=TrainerExporter(options.model, options.worker_id),
                         group_id=f"streamrec-trainer-{settings.namespace}-{options.model}", topics=topics,
                         model_label=options.model, poll_records=options.poll_records)
        self.options = options
        self.redis_url = redis_url
        # A poll waits until it has poll_records or the timeout: short when deltas are on, so a
        # quiet stream's clicks are not held back a whole poll before the next delta.
        if options.delta_every_s > 0:
            self.poll_timeout_s = min(0.2, options.delta_every_s / 4)
        self.store = VersionStore(client, settings.namespace, options.model)
        self.publisher = VersionPublisher(self.store, options.publish_options(), self.metrics, self._commit,
                                          on_publish=on_publish, on_delta=on_delta)
        # (user, item, features) examples the learner predicts at every version cut and delta;
        # their predictions reach on_publish/on_delta (a check that a version reproduces its trainer)
        self.probe = probe
        self.learner: LearnerProcess | None = None
        self.featurizer: Featurizer | None = None  # None until the model exists
        self._resume_from: Version | None = None
        self.source: ExampleSource = (ExampleQueue() if options.from_examples else
                                      Joiner(options.attribution_window_s, options.max_pending_impressions,
                                             options.positives, options.max_event_time_ahead_s))
        self.history: BehaviourHistory | None = None  # sequence models: recent clicks
        self.counters = Counters()
        self.positions: dict[TopicPartitionKey, int] = {}
        self.assigned: set[TopicPartitionKey] = set()
        self._partition_count = 0
        self._lag: dict[str, int] = {}
        self._trained_at: deque[tuple[float, int]] = deque()  # (monotonic time, examples) once a second
        self._last_quality = self._last_lag = 0.0
        self.first_record_at: float | None = None  # rates start here, after the group join
        self._examples_at_start = 0
        # label time (click, or window end) of the newest example trained: how fresh the model is
        self.newest_label_time = -np.inf
        self.newest_ingested_at: float | None = None  # wall-clock time the newest example was learned
        self.metrics.attach(self.readings)

    @property
    def head(self) -> int | None:
        return self.publisher.head

    # ------------------------------------------------------------------ resume

    def resume(self) -> int | None:
        """Read the head version (if any): example source, counters and offsets now; the model and
        the streaming metrics go to the learner process in :meth:`_start_learning`."""
        head = self._redis_retry("reading the head version", self.store.head)
        if head is None:
            return None
        version = self._redis_retry(f"loading version {head}", lambda: self.store.load(head))
        meta = version.meta
        self.featurizer = Featurizer(FeatureSpec.from_json(read_metadata(version.model_blob)["spec"]))
        if version.source_state is not None:
            state = orjson.loads(version.source_state)
            kind = source_kind(state)
            if (kind == ExampleQueue.kind) != self.options.from_examples:
                was = ("<ns>.examples (train --from-examples)" if kind == ExampleQueue.kind
                       else "impressions and clicks")
                raise StreamrecError(
                    f"version {head} of {self.options.model} was trained from {was}; start this worker the "
                    "same way, or train a new namespace or model name")
            self._resume_source(state)
        if version.history is not None:
            self.history = BehaviourHistory.from_state(orjson.loads(version.history))
        self.counters = Counters(**meta.counters)
        self.newest_label_time = meta.event_time if meta.event_time is not None else -np.inf
        self.newest_ingested_at = meta.ingested_at
        self.positions = {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): int(v) for k, v in meta.offsets.items()}
        self.publisher.head = head
        self._resume_from = version
        log.info("resuming %s from version %d: %d examples, offsets %s", self.options.model, head,
                 self.counters.examples, self.positions)
        return head

    def _resume_source(self, state: dict[str, Any]) -> None:
        """The example source from a version's state (one trainer reads every partition)."""
        self.source = source_from_state(state)

    def _redis_retry(self, what: str, action: Any) -> Any:
        return retry_while_unavailable(
            what, action, self.stop_event, backoff_max_s=self.options.backoff_max_s,
            on_failure=lambda: self.metrics.publish_failures.labels(**self.metrics.labels).inc())

    def _start_learning(self) -> None:
        """Hand the resumed model to the learner process (it may still be importing torch)."""
        assert self.learner is not None
        if self._resume_from is not None and not self.learner.ready:
            self.learner.resume(self._resume_from.weights, self._resume_from.quality_state,
                                self.options.window_examples, self._resume_from.number,
                                search=self.options.search_settings(), shards=self._resume_from.shards)
            self._resume_from = None
            self._set_probe()

    def _set_probe(self) -> None:
        if self.probe and self.learner is not None and self.featurizer is not None:
            users, items, features = zip(*self.probe)
            self.learner.set_probe(self.featurizer.build(list(users), list(items), list(features)))

    # ------------------------------------------------------------------ the worker's hooks

    def start(self) -> None:
        # The learner process imports torch while this one resumes and joins the group.
        self.learner = self.learner_class()
        self.resume()
        self._examples_at_start = self.counters.examples
        self.started_at = time.monotonic()

    def subscribed(self) -> None:
        self._start_learning()

    def on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        self.assigned = set(partitions)
        log.info("assigned %s", sorted(partitions))
        return {tp: self.positions[tp] for tp in partitions if tp in self.positions}

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        self.assigned -= set(partitions)

    def handle(self, records: Sequence[Record]) -> None:
        if self.first_record_at is None:
            self.first_record_at = time.monotonic()
        self.publisher.unpublished_events += len(records)
        for part in slices(records):
            self.source.advance(self._dispatch(part))
            self._train_ready()

    def _dispatch(self, records: Sequence[Record]) -> set[int]:
        """Offer one slice's messages to the example source in order; dead-letter the bad events.
        The hot loop of the worker: a JSON parse per message plus a few type checks per event."""
        offer, topics = self.source.offer_message, self.topics
        last: dict[TopicPartitionKey, int] = {}
        read = {"impression": 0, "click": 0, "watermark": 0}
        for record in records:
            topic, partition = record.topic, record.partition
            last[(topic, partition)] = record.offset
            taken, dead = offer(partition, topics.get(topic), record.value)
            for etype, n in taken.items():
                read[etype] += n
            for raw, problem in dead:
                self.dead_letter(raw, problem, topic, partition, record.offset)
                self.counters.dead_letters += 1
        for etype, n in read.items():
            self.counters.count_read(etype, n)
        for key, offset in last.items():
            self.positions[key] = offset + 1
        return {partition for _topic, partition in last}

    def tick(self) -> bool:
        assert self.learner is not None
        publisher, learner = self.publisher, self.learner
        if self.options.exit_at_end and self._stream_finished():
            self.source.advance()
            self._train_ready(flush=True)
            return True
        self._step_versions()
        if publisher.delta_pending:
            publisher.complete_delta(learner, block=False)
        if publisher.delta_due(learner, waiting=self.source.ready):
            self._request_delta()
        self._every_second()
        return False

    def _every_second(self, check_rollback: bool = True) -> None:
        """The rate samples, the lag and the rollback check, each at its own pace."""
        now = time.monotonic()
        if now - self._last_quality >= QUALITY_EVERY_S:
            if self.learner is not None and self.learner.ready:
                self.learner.raise_if_gone()
            self._trained_at.append((now, self.counters.examples))
            while len(self._trained_at) > 2 and now - self._trained_at[1][0] >= RATE_WINDOW_S:
                self._trained_at.popleft()
            if now - self._last_lag >= LAG_EVERY_S:
                self._measure_lag()
                self._last_lag = now
            if check_rollback:
                assert self.learner is not None
                self.publisher.check_rollback(self.learner)
            self._last_quality = now

    def finish(self, finished: bool) -> dict[str, Any]:
        assert self.learner is not None
        self.publisher.complete_delta(self.learner, block=True)
        # Final version: at the end of the stream, or on a clean stop (SIGTERM, Ctrl-C).
        if self.featurizer is not None and (self.publisher.unpublished or self.publisher.cutting):
            self.publisher.publish_final(self.learner, self._worker_cut, self.stop_event.is_set)
        self._measure_lag()
        return self.report(finished)

    def _commit(self, positions: dict[TopicPartitionKey, int]) -> None:
        assert self.consumer is not None
        self.consumer.commit(positions)

    def _stream_finished(self) -> bool:
        """Every partition of the topics has reached its final watermark in this worker.

        Every partition, not only the assigned ones: a worker restarted after a crash is first
        given part of the partitions while the group still counts its dead predecessor, and
        those may already be finished in the state it resumed. (So --exit-at-end is for one
        worker replaying a log; workers of a larger group run until stopped.)"""
        if not self.assigned:
            return False
        if not self._partition_count:
            assert self.consumer is not None
            self._partition_count = self.consumer.partition_count(next(iter(self.topics)))
        return (bool(self._partition_count) and self.source.finished(range(self._partition_count))
                and self._read_to_the_end())

    def _read_to_the_end(self) -> bool:
        """Every assigned partition read up to the high watermark its last fetch brought: a log
        replayed again after a final watermark reopens the stream, and a worker resumed from a
        state that had seen that watermark must still learn what came after it."""
        assert self.consumer is not None
        ends = self.consumer.end_offsets(sorted(self.assigned), cached=True)
        return all(end >= 0 and self.positions.get(tp, 0) >= end for tp, end in ends.items())

    # ------------------------------------------------------------------ learning

    def _proposed_spec(self, examples: list[Example]) -> FeatureSpec:
        """The model's spec as the stream's first examples suggest it."""
        inferred = self.options.spec_options.infer(feature_dicts([e.features for e in examples[:SPEC_SAMPLE_ROWS]]))
        return spec_for(self.options.model, inferred)

    def _ensure_model(self, examples: list[Example]) -> None:
        if self.featurizer is None:
            self.featurizer = Featurizer(self._proposed_spec(examples))
        if self.featurizer.spec.history_length and self.history is None:
            spec = self.featurizer.spec
            self.history = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields,
                                            ttl_seconds=history_ttl_seconds(self.options.model,
                                                                            self.options.model_settings))
        assert self.learner is not None
        if not self.learner.ready:
            self._start_learning()
        if not self.learner.ready:
            self.learner.init(self.options.model, self.featurizer.spec.to_json(), self.options.seed,
                              self.options.window_examples, self.options.model_settings,
                              search=self.options.search_settings())
            self._set_probe()

    def _featurize(self, examples: list[Example]) -> SparseBatch:
        """The batch of ``examples``: gathered as columns and featurized as ``evaluate`` does when
        every example came in a columnar batch, else by rows (a sequence model's histories move
        with every example, so those always go a batch at a time, in order)."""
        assert self.featurizer is not None
        labels = [e.label for e in examples]
        features = [e.features for e in examples]
        times = [e.event_time for e in examples]
        if self.history is None and all(map(is_row_ref, features)):
            chunk = gather_columns(self.featurizer.spec, features, np.array(labels, dtype=np.int8),
                                   np.array(times, dtype=np.float64))
            if chunk is not None:
                return self.featurizer.build_columns(chunk)
        users, items = [e.user_id for e in examples], [e.item_id for e in examples]
        features = feature_dicts(features)
        # each example sees the clicks before it, earlier ones of this batch too; its own joins after
        histories = None
        if self.history is not None:
            self.history.attach_encoder(self.featurizer.history_rows)
            histories = self.history.rows_before_learning(users, items, labels, features)
        batch = self.featurizer.build(users, items, features, labels, histories, times)
        if self.history is not None:
            self.history.after(users, items, labels, features, times)
        return batch

    def _train(self, examples: list[Example], batch: SparseBatch | None = None) -> None:
        """Learn ``examples`` (featurized here unless ``batch`` is theirs) in the learner process.
        Counters move at submission: every reader of model state (snapshot, quality) is answered
        after all batches sent before it."""
        if not examples:
            return
        self._ensure_model(examples)
        assert self.learner is not None
        self.learner.learn(batch if batch is not None else self._featurize(examples))
        self.counters.count_examples([e.impression_id for e in examples], [e.label for e in examples])
        self.publisher.unpublished_examples += len(examples)
        self.publisher.learned_since_delta += len(examples)
        self.newest_label_time = max(self.newest_label_time, max(e.label_time for e in examples))
        self.newest_ingested_at = time.time()

    def _train_ready(self, flush: bool = False) -> None:
        size = self.options.batch_size
        while self.source.ready >= size:
            full = size * min(self.source.ready // size, FEATURIZE_BATCHES)
            ahead = self.source.peek(full)
            self._ensure_model(ahead)
            # Featurized together, learned a batch at a time: each distinct value of the run is
            # looked up once, and the examples stay in the source until their batch is sent.
            run = self._featurize(ahead) if self.history is None else None
            for start in range(0, full, size):
                examples = self.source.take(size)
                self._train(examples, None if run is None else run.rows(start, start + size))
                # Every polled record is already in the source, and examples not yet trained are part
                # of its state, so a version may be cut between any two batches.
                self._step_versions()
        if flush:
            self._train(self.source.take())

    def _step_versions(self) -> None:
        """Publish a pending cut whose learner half has come, or cut a version if one is due."""
        assert self.learner is not None
        if self.publisher.cutting:
            self.publisher.complete(self.learner, block=False)
        elif self.learner.ready and self.publisher.due():
            self.publisher.cut(self.learner, self._worker_cut())

    def _worker_cut(self) -> WorkerCut:
        return WorkerCut(
            positions=dict(self.positions), counters=dataclasses.replace(self.counters),
            join=dataclasses.replace(self.source.counts), source_state=orjson.dumps(self.source.state()),
            history=None if self.history is None else orjson.dumps(self.history.state()),
            watermark=finite_or_none(self.source.watermark_time()),
            event_time=finite_or_none(self.newest_label_time), ingested_at=self.newest_ingested_at)

    def _request_delta(self) -> None:
        assert self.learner is not None
        # Examples waiting for a full batch would wait past this delta: train them now, in
        # batches of the usual size (a resumed worker may hold thousands released before its cut).
        self._train_ready(flush=True)
        # every click before the watermark is in this delta (positives="click"); see bench/freshness.py
        self.publisher.request_delta(self.learner, DeltaMeta(
            event_time=finite_or_none(self.newest_label_time), ingested_at=self.newest_ingested_at,
            examples_seen=self.counters.examples, watermark=finite_or_none(self.source.watermark_time())))

    def publish(self) -> int | None:
        """Publish everything up to now and wait for it (None: nothing new, no model, or Redis down)."""
        if self.learner is None or not self.learner.ready:
            return None
        return self.publisher.publish_now(self.learner, self._worker_cut)

    # ------------------------------------------------------------------ reporting

    def _measure_lag(self) -> None:
        """Messages not yet read per topic, from the high watermarks the consumer's fetches brought."""
        if not self.assigned or self.consumer is None:
            return
        try:
            ends = self.consumer.end_offsets(sorted(self.assigned), cached=True)
        except Exception as exc:  # noqa: BLE001 - lag is advisory; a broker hiccup must not stop training
            log.debug("end offsets unavailable: %s", exc)
            return
        per_topic: dict[str, int] = {}
        for tp, end in ends.items():
            if end >= 0:
                per_topic[tp[0]] = per_topic.get(tp[0], 0) + max(0, end - self.positions.get(tp, 0))
        self._lag = per_topic

    def readings(self) -> TrainerReadings:
        """What /metrics shows now (called from the metrics server's thread)."""
        learner = self.learner
        ready = learner is not None and learner.ready
        quality = learner.latest_quality()[0] if ready else None
        return TrainerReadings(
            counters=dataclasses.replace(self.counters), join=dataclasses.replace(self.source.counts),
            open_impressions=self.source.open_impressions, examples_per_second=self._recent_rate(),
            impressions_topic=self.settings.impressions_topic, clicks_topic=self.settings.clicks_topic,
            quality=quality, lag=dict(self._lag), head_version=self.publisher.head,
            live_version=self.publisher.live_version, population=learner.latest_population() if ready else [],
            tables=learner.latest_tables() if ready else {},
            history=self.history.summary() if self.history is not None else None)

    def _recent_rate(self) -> float:
        """Examples per second over the last ``RATE_WINDOW_S`` (0 when idle)."""
        samples = list(self._trained_at)
        now, examples = time.monotonic(), self.counters.examples
        if not samples:
            return 0.0
        then, before = samples[0]
        return (examples - before) / (now - then) if now > then else 0.0

    @property
    def _examples_this_run(self) -> int:
        return self.counters.examples - self._examples_at_start

    def final_quality(self) -> tuple[dict[str, float], float]:
        """The report's metrics: the learner's after every batch sent, and its seconds learning."""
        if self.learner is not None and self.learner.ready:
            return self.learner.quality()
        return {k: float("nan") for k in ("auc", "auc_error_bound", "auc_window", "logloss", "normalized_entropy",
                                          "calibration")}, 0.0

    def report(self, finished: bool) -> dict[str, Any]:
        snap, learn_seconds = self.final_quality()
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
            "versions_published": self.publisher.versions_published,
            "deltas_published": self.publisher.deltas_published,
            "rollbacks": self.publisher.rollbacks,
            "head_version": self.publisher.head,
            "dead_letters": self.counters.dead_letters,
            "events_consumed": self.counters.impressions_read + self.counters.clicks_read,
            "join": dataclasses.asdict(self.source.counts),
            "digest": f"{self.counters.digest:016x}",
            "finished": finished,
            **({"search": self.learner.search_report} if self.learner is not None and self.learner.search_report
               else {}),
        }

    def close(self) -> None:
        super().close()
        if self.learner is not None:
            self.learner.close()
            self.learner = None
        self.store.client.close()


__all__ = ["Trainer", "TrainerOptions", "VersionConflict"]
