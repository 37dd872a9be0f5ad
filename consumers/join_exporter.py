"""Prometheus metrics of one join worker (``streamrec join``), served on ``/metrics``.

The event-side series keep the trainer's names (events consumed, join outcomes, dead letters,
open impressions), so the same panels and alert rules cover a deployment whose joins run in the
join stage; they carry ``model="join"`` (the stage serves every model) and the worker. They
count what this worker did since it took each partition over, read at each scrape (a
``Collector``); partitions handed back keep counting in ``retired``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamrec.consumers.trainer_exporter import JOIN_OUTCOMES, LABELS
from streamrec.stream.prometheus import MetricsEndpoint

STAGE_LABEL = "join"
# the per-partition totals a join worker exports, as named in its counters and join counts
TOTALS = ("impressions_read", "clicks_read", "dead_letters", "examples", *JOIN_OUTCOMES)


@dataclass(frozen=True)
class JoinReadings:
    """What a join worker's series show at one scrape."""

    totals: dict[str, int]          # the TOTALS this worker counted
    open_impressions: int
    partitions: int
    impressions_topic: str
    clicks_topic: str


class _Series:
    """The collector of a join worker's series: built from a :class:`JoinReadings` per scrape."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.read: Callable[[], JoinReadings | None] = lambda: None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        r = self.read()
        labels = self.labels
        events = CounterMetricFamily("streamrec_events_consumed", "Events read from Kafka", labels=(*LABELS, "topic"))
        join = CounterMetricFamily("streamrec_join_outcomes", "Join results by outcome", labels=(*LABELS, "outcome"))
        dead = CounterMetricFamily("streamrec_dead_letters", "Malformed events sent to the dead-letter topic",
                                   labels=LABELS)
        emitted = CounterMetricFamily("streamrec_examples_emitted", "Labelled examples written to <ns>.examples",
                                      labels=LABELS)
        open_impressions = GaugeMetricFamily("streamrec_join_open_impressions",
                                             "Impressions waiting for a click or the window", labels=LABELS)
        partitions = GaugeMetricFamily("streamrec_join_partitions", "Source partitions this worker owns",
                                       labels=LABELS)
        if r is not None:
            events.add_metric([*labels, r.impressions_topic], r.totals["impressions_read"])
            events.add_metric([*labels, r.clicks_topic], r.totals["clicks_read"])
            for outcome in JOIN_OUTCOMES:
                join.add_metric([*labels, outcome], r.totals[outcome])
            dead.add_metric(labels, r.totals["dead_letters"])
            emitted.add_metric(labels, r.totals["examples"])
            open_impressions.add_metric(labels, r.open_impressions)
            partitions.add_metric(labels, r.partitions)
        yield from (events, join, dead, emitted, open_impressions, partitions)


class JoinExporter(MetricsEndpoint):
    """A join worker's ``/metrics``: :meth:`attach` the function that reads the worker's state."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        r = self.registry
        self.labels = {"model": STAGE_LABEL, "worker": worker}
        self._series = _Series([STAGE_LABEL, worker])
        r.register(self._series)
        self.checkpoints = Counter("streamrec_join_checkpoints", "Partition checkpoints written to Redis", LABELS,
                                   registry=r)
        self.checkpoint_failures = Counter("streamrec_join_checkpoint_failures",
                                           "Checkpoints not written (Redis down, or the partition moved)", LABELS,
                                           registry=r)
        self.skipped = Counter("streamrec_join_rewritten_skipped",
                               "Examples a predecessor had already written, regenerated and not written again",
                               LABELS, registry=r)
        for metric in (self.checkpoints, self.checkpoint_failures, self.skipped):
            metric.labels(**self.labels)

    def attach(self, read: Callable[[], JoinReadings | None]) -> None:
        self._series.read = read
