"""The trainer's Prometheus endpoint on its own: names, labels, and a clear error for a busy port."""

from __future__ import annotations

import socket

import pytest

from streamrec.consumers.example_source import JoinCounts
from streamrec.consumers.trainer_exporter import TrainerExporter, TrainerReadings
from streamrec.consumers.worker_counters import Counters
from streamrec.demo import scrape
from streamrec.stream.errors import StackError


def test_endpoint_serves_named_series_and_refuses_a_busy_port():
    metrics = TrainerExporter("lr", "w1")
    port = metrics.serve(0)
    try:
        metrics.attach(lambda: TrainerReadings(
            counters=Counters(), join=JoinCounts(positives=3, negatives=5), open_impressions=0,
            examples_per_second=0.0, impressions_topic="i", clicks_topic="c", head_version=7,
            history={"keys": 11, "expired": 4, "ttl_seconds": 60.0}))
        metrics.record_publish(0.02)
        scraped = scrape(port)
        assert scraped["streamrec_join_outcomes_total{outcome=positives}"] == 3
        assert scraped["streamrec_head_version"] == 7
        assert scraped["streamrec_history_keys"] == 11 and scraped["streamrec_history_expired_total"] == 4
        assert scraped["streamrec_publish_duration_seconds_count"] == 1
        assert 0 <= scraped["streamrec_seconds_since_publish_seconds"] < 5
        assert all(name.startswith("streamrec_") for name in scraped)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            with pytest.raises(StackError, match="choose another --metrics-port"):
                TrainerExporter("lr", "w2").serve(busy.getsockname()[1])
    finally:
        metrics.close()
