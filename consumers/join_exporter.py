"""Prometheus metrics of one join worker (``streamrec join``), served on ``/metrics``.

The event-side series keep the trainer's names (events consumed, join outcomes, dead letters,
lag, open impressions), so the same panels and alert rules cover a deployment whose joins run
in the join stage; they carry ``model="join"`` (the stage serves every model) and the worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from streamrec.consumers.trainer_exporter import JOIN_OUTCOMES
from streamrec.stream.prometheus import MetricsEndpoint

STAGE_LABEL = "join"


class JoinMetrics(MetricsEndpoint):
    def __init__(self, worker: str) -> None:
        super().__init__()
        r = self.registry
        labels = ("model", "worker")
        self.events = Counter("streamrec_events_consumed", "Events read from Kafka", labels + ("topic",), registry=r)
        self.join = Counter("streamrec_join_outcomes", "Join results by outcome", labels + ("outcome",), registry=r)
        self.dead_letters = Counter("streamrec_dead_letters", "Malformed events sent to the dead-letter topic",
                                    labels, registry=r)
        self.examples = Counter("streamrec_examples_emitted", "Labelled examples written to <ns>.examples",
                                labels, registry=r)
        self.open_impressions = Gauge("streamrec_join_open_impressions",
                                      "Impressions waiting for a click or the window", labels, registry=r)
        self.partitions = Gauge("streamrec_join_partitions", "Source partitions this worker owns", labels,
                                registry=r)
        self.checkpoints = Counter("streamrec_join_checkpoints", "Partition checkpoints written to Redis", labels,
                                   registry=r)
        self.checkpoint_failures = Counter("streamrec_join_checkpoint_failures",
                                           "Checkpoints not written (Redis down, or the partition moved)", labels,
                                           registry=r)
        self.skipped = Counter("streamrec_join_rewritten_skipped",
                               "Examples a predecessor had already written, regenerated and not written again",
                               labels, registry=r)
        self.lag = Gauge("streamrec_consumer_lag_messages", "Messages not yet read, per topic", labels + ("topic",),
                         registry=r)
        self.labels = {"model": STAGE_LABEL, "worker": worker}
        for outcome in JOIN_OUTCOMES:
            self.join.labels(**self.labels, outcome=outcome)
        for metric in (self.dead_letters, self.examples, self.checkpoints, self.checkpoint_failures, self.skipped):
            metric.labels(**self.labels)
