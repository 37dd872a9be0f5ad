"""Prometheus metrics of one trainer worker, served on ``/metrics``.

Two kinds of series, each with ``model`` and ``worker`` labels (never a user or item id):

* the stream's totals and state (examples, events, join outcomes, dead letters, quality, lag,
  head and live version) are read from the worker when Prometheus scrapes (a ``Collector``), so
  a resumed worker reports the stream's totals from its first scrape on: its counters come
  from the version it resumed;
* what this process did (publishes, their duration and failures, deltas, held versions,
  rollbacks) are ordinary counters and histograms.

Each worker owns its registry, so two workers in one process (tests) do not share series.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamrec.consumers.example_source import JoinCounts
from streamrec.consumers.worker_counters import Counters
from streamrec.stream.prometheus import MetricsEndpoint

LABELS = ("model", "worker")
JOIN_OUTCOMES = ("positives", "negatives", "late_clicks", "orphan_clicks", "duplicate_clicks",
                 "duplicate_impressions", "evicted", "refused_times")
HELD_REASONS = ("non_finite", "auc_drop")


@dataclass(frozen=True)
class TrainerReadings:
    """What the stream-level series show at one scrape."""

    counters: Counters
    join: JoinCounts
    open_impressions: int
    examples_per_second: float
    impressions_topic: str
    clicks_topic: str
    quality: dict[str, float] | None = None  # the learner's latest streaming metrics, once it has any
    lag: dict[str, int] = field(default_factory=dict)  # messages not yet read, per topic
    head_version: int | None = None
    live_version: int | None = None
    # the online search's challengers (consumers/learner.py, population_of): move, examples, auc, ...
    population: list[dict] = field(default_factory=list)
    # keyed tables (models/keyed_rows.py, table_summary): rows, admitted, evicted, bytes, rows per field
    tables: dict[str, dict] = field(default_factory=dict)
    # sequence models' histories (stream/behaviour_history.py, summary): keys held, keys expired
    history: dict[str, float] | None = None


class _StreamSeries:
    """The collector of the stream-level series: built from a :class:`TrainerReadings` per scrape."""

    def __init__(self, labels: list[str], read: Callable[[], TrainerReadings | None]) -> None:
        self.labels, self.read = labels, read

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape; also keeps registration from calling read()

    def collect(self) -> Iterator[Metric]:
        r = self.read()
        labels = self.labels

        def counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=LABELS)
            if value is not None:
                family.add_metric(labels, value)
            return family

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            if value is not None and not math.isnan(value):
                family.add_metric(labels, value)
            return family

        yield counter("streamrec_examples_trained", "Labelled examples trained on", r and r.counters.examples)
        yield counter("streamrec_dead_letters", "Malformed events sent to the dead-letter topic",
                      r and r.counters.dead_letters)
        events = CounterMetricFamily("streamrec_events_consumed", "Events read from Kafka",
                                     labels=(*LABELS, "topic"))
        join = CounterMetricFamily("streamrec_join_outcomes", "Join results by outcome", labels=(*LABELS, "outcome"))
        lag = GaugeMetricFamily("streamrec_consumer_lag_messages", "Messages not yet read, per topic",
                                labels=(*LABELS, "topic"))
        quality = {name: GaugeMetricFamily(name, doc, labels=(*LABELS, "window")) for name, doc in (
            ("streamrec_auc_ratio", "Progressive-validation ROC AUC"),
            ("streamrec_logloss_nats", "Mean logloss per example"),
            ("streamrec_normalized_entropy_ratio", "Logloss divided by the entropy of the observed click rate"),
            ("streamrec_calibration_ratio", "Mean prediction / observed click rate"))}
        if r is not None:
            events.add_metric([*labels, r.impressions_topic], r.counters.impressions_read)
            events.add_metric([*labels, r.clicks_topic], r.counters.clicks_read)
            for outcome in JOIN_OUTCOMES:
                join.add_metric([*labels, outcome], getattr(r.join, outcome))
            for topic, value in r.lag.items():
                lag.add_metric([*labels, topic], value)
            if r.quality is not None and r.quality["examples"] > 0:
                for window, suffix in (("lifetime", ""), ("recent", "_window")):
                    for name, key in (("streamrec_auc_ratio", "auc"), ("streamrec_logloss_nats", "logloss"),
                                      ("streamrec_normalized_entropy_ratio", "normalized_entropy"),
                                      ("streamrec_calibration_ratio", "calibration")):
                        quality[name].add_metric([*labels, window], r.quality[key + suffix])
        yield events
        yield join
        yield lag
        yield from quality.values()
        yield gauge("streamrec_join_open_impressions", "Impressions waiting for a click or the window",
                    None if r is None else r.open_impressions)
        yield gauge("streamrec_examples_per_second", "Training rate", None if r is None else r.examples_per_second)
        promotions = None if r is None or r.quality is None else r.quality.get("search_promotions")
        searching = promotions is not None and promotions == promotions  # NaN: no search
        for name, key, doc in (
                ("streamrec_search_promotions", "search_promotions", "Challengers the online search promoted"),
                ("streamrec_search_challengers", "search_challengers", "Challengers the online search runs now"),
                ("streamrec_search_compute_ratio", "search_compute_multiple",
                 "Examples learned by all search members per example of the stream")):
            yield gauge(name, doc, r.quality[key] if searching else None)
        members = {name: GaugeMetricFamily(name, doc, labels=(*LABELS, "member")) for name, doc in (
            ("streamrec_search_member_examples", "Examples a search challenger has been judged on"),
            ("streamrec_search_member_auc_ratio", "A search challenger's progressive AUC since it joined"),
            ("streamrec_search_member_champion_auc_ratio", "The champion's progressive AUC on the same examples"),
            ("streamrec_search_member_z", "Standard errors by which a challenger's logloss is below the champion's"))}
        for member in [] if r is None else r.population:
            for name, key in (("streamrec_search_member_examples", "examples"),
                              ("streamrec_search_member_auc_ratio", "auc"),
                              ("streamrec_search_member_champion_auc_ratio", "champion_auc"),
                              ("streamrec_search_member_z", "z")):
                value = member.get(key)
                members[name].add_metric([*labels, member["member"]], float("nan") if value is None else value)
        yield from members.values()
        yield from _table_series(labels, {} if r is None else r.tables)
        history = None if r is None else r.history
        yield gauge("streamrec_history_keys", "Users (or items) a sequence model's histories hold",
                    None if history is None else history["keys"])
        yield counter("streamrec_history_expired", "History keys forgotten for not being seen in any "
                      "example within tables.ttl_seconds of event time", None if history is None else history["expired"])
        yield gauge("streamrec_head_version", "Newest version of the model (the trainer's resume point)",
                    None if r is None else r.head_version)
        yield gauge("streamrec_live_version", "The version the live pointer names",
                    None if r is None else r.live_version)


def _table_series(labels: list[str], tables: dict[str, dict]) -> Iterator[Metric]:
    """Keyed tables' rows (per field too), admissions, evictions and bytes, labelled by table."""
    rows = GaugeMetricFamily("streamrec_table_rows", "Rows a keyed table holds", labels=(*LABELS, "table"))
    by_field = GaugeMetricFamily("streamrec_table_field_rows", "Rows held by a field's (or cross's) own keys",
                                 labels=(*LABELS, "table", "field"))
    table_bytes = GaugeMetricFamily("streamrec_table_bytes", "Bytes of a keyed table: rows, optimiser state, index",
                                    labels=(*LABELS, "table"))
    admitted = CounterMetricFamily("streamrec_table_admitted", "Keys given a row of their own",
                                   labels=(*LABELS, "table"))
    evicted = CounterMetricFamily("streamrec_table_evicted", "Rows freed by expiry or the row budget",
                                  labels=(*LABELS, "table"))
    waiting = CounterMetricFamily("streamrec_table_not_admitted", "Sightings of keys without a row of their own "
                                  "(not admitted yet, or the budget full)", labels=(*LABELS, "table"))
    for table, summary in tables.items():
        rows.add_metric([*labels, table], summary["rows"])
        table_bytes.add_metric([*labels, table], summary["bytes"])
        admitted.add_metric([*labels, table], summary["admitted"])
        evicted.add_metric([*labels, table], summary["evicted"])
        waiting.add_metric([*labels, table], summary.get("not_admitted", 0))
        for name, held in summary.get("fields", {}).items():
            by_field.add_metric([*labels, table, name], held)
    yield from (rows, by_field, table_bytes, admitted, evicted, waiting)


class TrainerExporter(MetricsEndpoint):
    """The trainer's ``/metrics``: :meth:`attach` the function that reads the worker's state."""

    def __init__(self, model: str, worker: str) -> None:
        super().__init__()
        r = self.registry
        self.labels = {"model": model, "worker": worker}
        self._read: Callable[[], TrainerReadings | None] = lambda: None
        r.register(_StreamSeries([model, worker], lambda: self._read()))

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, LABELS + extra, registry=r)

        self.publish_failures = counter("streamrec_publish_failures", "Publishes that failed (Redis down, ...)")
        self.publish_duration = Histogram(
            "streamrec_publish_duration_seconds", "Time to serialise and write one version", LABELS, registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.last_publish = Gauge("streamrec_last_publish_timestamp_seconds", "Unix time of the last publish",
                                  LABELS, registry=r)
        self.seconds_since_publish = Gauge("streamrec_seconds_since_publish_seconds",
                                           "Seconds since the last publish", LABELS, registry=r)
        self.deltas = counter("streamrec_deltas_published", "Deltas (rows changed since the last) published")
        self.delta_bytes = counter("streamrec_delta_bytes", "Bytes of deltas published")
        self.versions_held = counter("streamrec_versions_held", "Versions the quality gate kept from going live",
                                     ("reason",))
        self.rollbacks = counter("streamrec_rollbacks", "Automatic rollbacks after the served AUC fell")
        self._last_publish_monotonic: float | None = None
        self._lock = threading.Lock()
        # computed on scrape, so it grows while a worker is stuck
        self.seconds_since_publish.labels(**self.labels).set_function(self._seconds_since_publish)
        for metric in (self.publish_failures, self.deltas, self.delta_bytes, self.rollbacks):
            metric.labels(**self.labels)  # present from the start, so rate() works from zero
        for reason in HELD_REASONS:
            self.versions_held.labels(**self.labels, reason=reason)

    def attach(self, read: Callable[[], TrainerReadings | None]) -> None:
        self._read = read

    def mark_rank(self, trainer: str, rank: int, ranks: int) -> None:
        """This worker is rank ``rank`` of trainer ``trainer``, which learns its model as ``ranks``
        processes: ``streamrec_trainer_ranks{trainer, rank}`` (value: the rank count), so that
        Prometheus queries and the dashboard add a model's ranks up (``sum by (trainer)``)."""
        Gauge("streamrec_trainer_ranks", "Ranks of the trainer this worker is one rank of",
              (*LABELS, "trainer", "rank"), registry=self.registry).labels(
            **self.labels, trainer=trainer, rank=str(rank)).set(ranks)

    def _seconds_since_publish(self) -> float:
        with self._lock:
            last = self._last_publish_monotonic
        return math.nan if last is None else time.monotonic() - last

    def record_publish(self, seconds: float) -> None:
        self.publish_duration.labels(**self.labels).observe(seconds)
        self.last_publish.labels(**self.labels).set(time.time())
        with self._lock:
            self._last_publish_monotonic = time.monotonic()
