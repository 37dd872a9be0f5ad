"""Prometheus metrics of one trainer worker, served on ``/metrics``.

Names follow ``streamrec_<what>_<unit>``; every series carries ``model`` and ``worker`` labels
(never a user or item id). Each worker owns its registry, so two workers in one process (tests)
do not share series.
"""

from __future__ import annotations

import math
import threading
import time

from prometheus_client import Counter, Gauge, Histogram

from streamrec.stream.prometheus import MetricsEndpoint

_LABELS = ("model", "worker")
JOIN_OUTCOMES = ("positives", "negatives", "late_clicks", "orphan_clicks", "duplicate_clicks",
                 "duplicate_impressions", "evicted")


class TrainerMetrics(MetricsEndpoint):
    def __init__(self, model: str, worker: str) -> None:
        super().__init__()
        r, labels = self.registry, _LABELS

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels + extra, registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels + extra, registry=r)

        self.auc = gauge("streamrec_auc_ratio", "Progressive-validation ROC AUC", ("window",))
        self.logloss = gauge("streamrec_logloss_nats", "Mean logloss per example", ("window",))
        self.normalized_entropy = gauge("streamrec_normalized_entropy_ratio",
                                        "Logloss divided by the entropy of the observed click rate", ("window",))
        self.calibration = gauge("streamrec_calibration_ratio", "Mean prediction / observed click rate", ("window",))
        self.examples = counter("streamrec_examples_trained", "Labelled examples trained on")
        self.events = counter("streamrec_events_consumed", "Events read from Kafka", ("topic",))
        self.join = counter("streamrec_join_outcomes", "Join results by outcome", ("outcome",))
        self.dead_letters = counter("streamrec_dead_letters", "Malformed events sent to the dead-letter topic")
        self.lag = gauge("streamrec_consumer_lag_messages", "Messages not yet read, per topic", ("topic",))
        self.open_impressions = gauge("streamrec_join_open_impressions", "Impressions waiting for a click or the window")
        self.live_version = gauge("streamrec_model_version", "Newest version this worker published")
        self.last_publish = gauge("streamrec_last_publish_timestamp_seconds", "Unix time of the last publish")
        self.publish_failures = counter("streamrec_publish_failures", "Publishes that failed (Redis down, ...)")
        self.publish_duration = Histogram(
            "streamrec_publish_duration_seconds", "Time to serialise and write one version", labels, registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.deltas = counter("streamrec_deltas_published", "Deltas (rows changed since the last) published")
        self.delta_bytes = counter("streamrec_delta_bytes", "Bytes of deltas published")
        self.versions_held = counter("streamrec_versions_held", "Versions the quality gate kept from going live",
                                     ("reason",))
        self.rollbacks = counter("streamrec_rollbacks", "Automatic rollbacks after the served AUC fell")
        self.served_version = gauge("streamrec_live_version", "The version the live pointer names")
        self.examples_per_second = gauge("streamrec_examples_per_second", "Training rate over the last interval")
        self.seconds_since_publish = gauge("streamrec_seconds_since_publish_seconds", "Seconds since the last publish")
        self.labels = {"model": model, "worker": worker}
        self._last_publish_monotonic: float | None = None
        self._lock = threading.Lock()
        # seconds since the last publish is computed on scrape, so it grows while a worker is stuck
        self.seconds_since_publish.labels(**self.labels).set_function(self._seconds_since_publish)
        for outcome in JOIN_OUTCOMES:  # present from the start, so rate() works from zero
            self.join.labels(**self.labels, outcome=outcome)
        self.dead_letters.labels(**self.labels)
        self.publish_failures.labels(**self.labels)
        self.examples.labels(**self.labels)
        self.deltas.labels(**self.labels)
        self.delta_bytes.labels(**self.labels)
        self.rollbacks.labels(**self.labels)
        for reason in ("non_finite", "auc_drop"):
            self.versions_held.labels(**self.labels, reason=reason)

    def _seconds_since_publish(self) -> float:
        with self._lock:
            last = self._last_publish_monotonic
        return math.nan if last is None else time.monotonic() - last

    # ------------------------------------------------------------------ updates

    def record_quality(self, snapshot: dict[str, float]) -> None:
        for window, suffix in (("lifetime", ""), ("recent", "_window")):
            self.auc.labels(**self.labels, window=window).set(snapshot["auc" + suffix])
            self.logloss.labels(**self.labels, window=window).set(snapshot["logloss" + suffix])
            self.normalized_entropy.labels(**self.labels, window=window).set(snapshot["normalized_entropy" + suffix])
            self.calibration.labels(**self.labels, window=window).set(snapshot["calibration" + suffix])

    def record_join(self, delta: dict[str, int]) -> None:
        for outcome, n in delta.items():
            if n:
                self.join.labels(**self.labels, outcome=outcome).inc(n)

    def record_publish(self, version: int, seconds: float) -> None:
        self.publish_duration.labels(**self.labels).observe(seconds)
        self.live_version.labels(**self.labels).set(version)
        self.last_publish.labels(**self.labels).set(time.time())
        with self._lock:
            self._last_publish_monotonic = time.monotonic()
