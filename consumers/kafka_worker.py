"""The skeleton both Kafka workers share (the trainer and the join worker).

A worker serves its ``/metrics`` and announces it in the worker registry, opens a consumer in
its group and a producer, subscribes, and then polls until stopped or finished::

    serve_metrics()  start()  attach(): subscribe(on_assign, on_revoke), subscribed()
    loop: poll → handle(records) → tick() (True: finished)
    finish(finished) → report;  close the clients (also on failure)

A subclass fills in those hooks. Malformed events go to the dead-letter topic with their reason
and source position (:meth:`dead_letter`); the subclass counts them in its checkpointed state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from prometheus_client import generate_latest

from streamrec.stream import events as ev
from streamrec.stream.kafka_client import (
    EventConsumer,
    EventProducer,
    KafkaSecurity,
    Record,
    TopicPartitionKey,
    make_consumer,
    make_producer,
)
from streamrec.stream.prometheus import MetricsEndpoint
from streamrec.stream.settings import Settings
from streamrec.stream.worker_registry import Heartbeat, metrics_url


@dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker is to Prometheus and the worker registry, and where its ``/metrics`` listens."""

    worker_id: str
    metrics_port: int | None = None  # None: no HTTP endpoint (tests); 0: any free port
    metrics_host: str = "127.0.0.1"


class KafkaWorker:
    """A consumer-group worker's lifecycle; see the module docstring for the hooks."""

    role: ClassVar[str]  # in the worker registry: "trainer" or "joiner"

    def __init__(self, settings: Settings, identity: WorkerIdentity, *, kafka_bootstrap: str,
                 redis_client: redis.Redis, exporter: MetricsEndpoint, group_id: str, topics: dict[str, str],
                 model_label: str, poll_records: int = 5000) -> None:
        self.settings = settings
        self.identity = identity
        self.kafka_bootstrap = kafka_bootstrap
        self.redis = redis_client
        self.metrics = exporter
        self.group_id = group_id
        self.topics = topics  # topic -> what it carries ("impressions", "clicks", "examples")
        self.model_label = model_label
        self.poll_records = poll_records
        self.poll_timeout_s = 0.2
        self.security = KafkaSecurity.from_settings(settings)
        self.stop_event = threading.Event()
        self.assignments = 0  # group (re)joins, counted for operators and tests
        self.started_at = time.monotonic()
        self.consumer: EventConsumer | None = None
        self.producer: EventProducer | None = None
        self._heartbeat: Heartbeat | None = None

    # ------------------------------------------------------------------ hooks

    def start(self) -> None:
        """Before the group is joined (resume state, start helpers)."""

    def subscribed(self) -> None:
        """Right after subscribing, before the first poll."""

    def on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int] | None:
        """Partitions given to this worker; return the offsets to start them at (None: the group's)."""
        return None

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        """Partitions taken away (checkpoint what is theirs)."""

    def handle(self, records: Sequence[Record]) -> None:
        raise NotImplementedError

    def tick(self) -> bool:
        """Periodic work after each poll; True when the worker has finished its stream."""
        return False

    def finish(self, finished: bool) -> dict[str, Any]:
        """After the loop, with the clients still open: the last checkpoint and the report."""
        raise NotImplementedError

    def close_extra(self) -> None:
        """Close what the subclass opened besides the consumer and producer."""

    # ------------------------------------------------------------------ the skeleton

    def serve_metrics(self) -> int | None:
        """Serve ``/metrics`` (if a port is set) and announce it; idempotent. Returns the port."""
        identity = self.identity
        if identity.metrics_port is not None and self.metrics.port is None:
            self.metrics.serve(identity.metrics_port, identity.metrics_host, self.settings.auth_token or None)
        if self.metrics.port is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(self.redis, self.settings.namespace, role=self.role, model=self.model_label,
                                        worker=identity.worker_id, url=metrics_url(identity.metrics_host,
                                                                                   self.metrics.port),
                                        final_metrics=lambda: generate_latest(self.metrics.registry)).start()
        return self.metrics.port

    def _assigned(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int] | None:
        self.assignments += 1
        return self.on_assign(partitions)

    def attach(self) -> None:
        """Join the group and subscribe (a worker with partitions of its own assigns them here)."""
        assert self.consumer is not None
        self.consumer.subscribe(list(self.topics), on_assign=self._assigned, on_revoke=self.on_revoke)
        self.subscribed()

    def run(self) -> dict[str, Any]:
        """Work until stopped (``stop_event``) or finished; return the report."""
        self.serve_metrics()
        self.start()
        client, timeout = self.settings.kafka_client, self.settings.consumer_session_timeout_ms
        self.consumer = make_consumer(self.kafka_bootstrap, self.group_id, client, timeout, self.security)
        self.producer = make_producer(self.kafka_bootstrap, client, self.security)
        finished = False
        try:
            self.attach()
            while not self.stop_event.is_set():
                records = self.consumer.poll(self.poll_records, self.poll_timeout_s)
                if records:
                    self.handle(records)
                if self.tick():
                    finished = True
                    break
            return self.finish(finished)
        finally:
            self.consumer.close()  # a revoke callback may still use the producer: close that after
            self.producer.close()
            self.close_extra()
            self.consumer = self.producer = None

    def dead_letter(self, raw: bytes, reason: str, topic: str, partition: int, offset: int) -> None:
        """Send a bad event to the dead-letter topic with its reason and source. The source
        position makes a repeat after a crash recognisable downstream."""
        assert self.producer is not None
        self.producer.send(self.settings.dead_letter_topic, ev.dead_letter(raw, reason, f"{topic}:{partition}:{offset}"))

    def close(self) -> None:
        """Stop announcing (leaving the final metrics), stop serving /metrics."""
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        self.metrics.close()
