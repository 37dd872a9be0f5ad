"""One small Kafka interface over two clients: confluent-kafka (fast, C) and kafka-python (pure Python).

``auto`` picks confluent-kafka when it imports, else kafka-python. Both produce with the
murmur2 partitioner, so a key lands on the same partition whichever client wrote it: that is
what keeps a user's impressions and clicks co-partitioned.

Auto-commit is always off: trainers commit offsets only after the state that includes them is
safe. Group joins on Tansu take about half of ``session.timeout.ms`` (docs/kafka.md), so the
session timeout is a setting and defaults low.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from streamrec.stream.errors import ConfigError, StackError

log = logging.getLogger(__name__)
# librdkafka's own messages go through Python logging instead of straight to stderr.
_RDKAFKA_LOG = logging.getLogger("streamrec.librdkafka")

KafkaClientName = Literal["auto", "confluent", "kafka-python"]


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to the brokers (settings ``kafka_security_protocol`` and friends,
    docs/security.md). PLAINTEXT, the default, adds nothing to a client's configuration."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""

    @classmethod
    def from_settings(cls, settings: object) -> KafkaSecurity:
        s: Any = settings
        return cls(s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username, s.kafka_sasl_password,
                   s.kafka_ssl_ca_location, s.kafka_ssl_certificate_location, s.kafka_ssl_key_location)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL")

    @property
    def ssl(self) -> bool:
        return self.protocol.endswith("SSL")

    def confluent(self) -> dict[str, str]:
        """librdkafka's keys (confluent-kafka and its AdminClient)."""
        if self.protocol == "PLAINTEXT":
            return {}
        config = {"security.protocol": self.protocol}
        if self.sasl:
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                           "sasl.password": self.sasl_password})
        if self.ssl:
            config.update({k: v for k, v in (("ssl.ca.location", self.ssl_ca_location),
                                             ("ssl.certificate.location", self.ssl_certificate_location),
                                             ("ssl.key.location", self.ssl_key_location)) if v})
        return config

    def kafka_python(self) -> dict[str, str]:
        """kafka-python's keyword arguments."""
        if self.protocol == "PLAINTEXT":
            return {}
        config = {"security_protocol": self.protocol}
        if self.sasl:
            config.update({"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                           "sasl_plain_password": self.sasl_password})
        if self.ssl:
            config.update({k: v for k, v in (("ssl_cafile", self.ssl_ca_location),
                                             ("ssl_certfile", self.ssl_certificate_location),
                                             ("ssl_keyfile", self.ssl_key_location)) if v})
        return config


PLAINTEXT = KafkaSecurity()
CLIENT_NAMES: tuple[str, ...] = get_args(KafkaClientName)
TopicPartitionKey = tuple[str, int]
# Called with the partitions just assigned; may return start offsets for some of them (the
# trainer resumes from the offsets stored with its last version, not from the group's commits).
AssignCallback = Callable[[list[TopicPartitionKey]], "dict[TopicPartitionKey, int] | None"]
RevokeCallback = Callable[[list[TopicPartitionKey]], None]


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka message as the workers read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class EventProducer(Protocol):
    """What streamrec needs of a Kafka producer (both clients implement it)."""

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def close(self) -> None: ...


class EventConsumer(Protocol):
    """What streamrec needs of a Kafka consumer: group subscription with assign/revoke callbacks, manual
    assignment, seeks, polls, commits and high watermarks."""

    def subscribe(
        self, topics: Sequence[str], on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None: ...
    def assign(self, partitions: Sequence[TopicPartitionKey]) -> None: ...
    def assign_at(self, offsets: dict[TopicPartitionKey, int]) -> None:
        """Assign (no group) starting at the given offsets."""
        ...
    def seek(self, topic: str, partition: int, offset: int) -> None: ...
    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...
    def commit(self, offsets: dict[TopicPartitionKey, int]) -> None: ...
    def end_offsets(self, partitions: Sequence[TopicPartitionKey], cached: bool = False) -> dict[TopicPartitionKey, int]:
        """High watermarks. Uncached, the broker's answer is confirmed by a fetch from it (a probe
        consumer), so it is exact even on a broker whose ListOffsets trails the log. ``cached`` takes the
        ones the last fetches brought (no broker round trip, -1 where none is known yet): asking the
        broker while subscribed costs a round trip per partition, slow on Tansu."""
        ...
    def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` (0 if it is not known yet)."""
        ...
    def close(self) -> None: ...


def resolve_client(name: str) -> str:
    if name == "auto":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            return "kafka-python"
        return "confluent"
    if name not in CLIENT_NAMES:
        raise ConfigError(f"kafka_client (STREAMREC_KAFKA_CLIENT): unknown client {name!r}; "
                          "use auto, confluent or kafka-python")
    return name


# --------------------------------------------------------------------------- confluent-kafka


@functools.cache
def _final_delivery_errors() -> frozenset[int]:
    """Delivery errors that sending again cannot cure (the message itself is wrong)."""
    from confluent_kafka import KafkaError

    return frozenset(getattr(KafkaError, name) for name in (
        "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "CORRUPT_MESSAGE", "UNKNOWN_TOPIC_OR_PART",
        "TOPIC_AUTHORIZATION_FAILED", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION") if hasattr(KafkaError, name))


class _ConfluentProducer:
    def __init__(self, bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({
            **security.confluent(),
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            # One request in flight per broker: a retry after a broker restart cannot reorder a
            # partition's messages, which a resumed replay relies on (producers/replay.py); at worst
            # it repeats one, and the joiner drops repeated events. Not the idempotent producer:
            # Tansu on S3 storage dropped retried batches of one after a restart
            # (docs/local-stack.md, bench/results/crash_rounds_idempotent_producer.json).
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "logger": _RDKAFKA_LOG,
        })
        self._errors: list[str] = []
        # Messages the broker refused (say, its storage was briefly down), to send again: a message
        # given up while later ones of its partition arrive would leave a gap that nothing fills.
        self._failed: list[tuple[str, int, bytes | None, bytes]] = []
        self._last_refusal = ""
        self._sends = 0

    def _on_delivery(self, err, msg) -> None:  # noqa: ANN001 - librdkafka callback
        if err is None:
            return
        if err.code() in _final_delivery_errors():
            self._errors.append(str(err))
        else:
            self._failed.append((msg.topic(), msg.partition(), msg.key(), msg.value()))
            self._last_refusal = str(err)

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int | None) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery, **kwargs)
                return
            except BufferError:
                # Local queue full: let librdkafka drain it instead of dropping events.
                self._producer.poll(0.05)

    def _resend_failed(self) -> None:
        failed, self._failed = self._failed, []
        for topic, partition, key, value in failed:
            self._produce(topic, value, key, partition)

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self._sends += 1
        if self._sends % 256 == 0:
            self._producer.poll(0)  # serve delivery reports, so refused messages go again soon
        if self._failed:
            self._resend_failed()
        self._produce(topic, value, key, partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = self._producer.flush(max(0.1, deadline - time.monotonic()))
            if remaining:
                raise StackError(f"{remaining} messages not delivered within {timeout_s}s")
            if not self._failed:
                break
            if time.monotonic() > deadline:
                raise StackError(f"{len(self._failed)} messages refused by the broker until the end "
                                 f"({self._last_refusal})")
            time.sleep(0.5)
            self._resend_failed()
        if self._errors:
            raise StackError(f"delivery failed: {self._errors[0]} ({len(self._errors)} errors)")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            # Dropping the last reference destroys the librdkafka handle and its threads now,
            # not at some later garbage collection when the broker may be gone.
            self._producer = None


class _ConfluentConsumer:
    def __init__(self, bootstrap: str, group_id: str, session_timeout_ms: int,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        from confluent_kafka import Consumer

        self._probe_config = {**security.confluent(), "bootstrap.servers": bootstrap, "logger": _RDKAFKA_LOG}
        self._consumer = Consumer({
            **security.confluent(),
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 4),
            "partition.assignment.strategy": "range",
            "logger": _RDKAFKA_LOG,
        })

    def subscribe(self, topics, on_assign=None, on_revoke=None) -> None:  # noqa: ANN001
        def _assigned(consumer, parts) -> None:  # noqa: ANN001
            offsets = (on_assign([(p.topic, p.partition) for p in parts]) if on_assign else None) or {}
            for part in parts:
                if (part.topic, part.partition) in offsets:
                    part.offset = offsets[(part.topic, part.partition)]
            # Assigning inside the callback is how librdkafka takes start offsets in an eager rebalance.
            consumer.assign(parts)

        def _revoked(_consumer, parts) -> None:  # noqa: ANN001
            if on_revoke:
                on_revoke([(p.topic, p.partition) for p in parts])

        self._consumer.subscribe(list(topics), on_assign=_assigned, on_revoke=_revoked)

    def assign(self, partitions) -> None:  # noqa: ANN001
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])

    def assign_at(self, offsets) -> None:  # noqa: ANN001
        from confluent_kafka import TopicPartition

        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def seek(self, topic: str, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        # Inside an assign callback seek is not yet allowed; re-assigning with an offset is.
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except Exception:  # noqa: BLE001 - librdkafka raises KafkaException(_STATE) before fetch start
            self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        out: list[Record] = []
        for msg in self._consumer.consume(max_records, timeout=timeout_s):
            err = msg.error()
            if err is not None:
                log.warning("consumer error: %s", err)
                continue
            out.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))
        return out

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> None:
        from confluent_kafka import TopicPartition

        if offsets:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )

    def end_offsets(self, partitions, cached: bool = False) -> dict[TopicPartitionKey, int]:  # noqa: ANN001
        from confluent_kafka import TopicPartition

        result = {}
        for topic, partition in partitions:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5,
                                                              cached=cached)
            result[(topic, partition)] = high if high is not None and high >= 0 else -1
        return result if cached else _confluent_fetched_ends(self._probe_config, result)

    def partition_count(self, topic: str) -> int:
        metadata = self._consumer.list_topics(topic, timeout=5).topics.get(topic)
        return 0 if metadata is None or metadata.error is not None else len(metadata.partitions)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# A broker's ListOffsets answer can trail the log: Tansu on S3 storage answers 1 for a partition of
# thousands of records, while its fetch responses carry the true high watermark. Where the end must be
# exact (reading back what a predecessor wrote), a fetch from the listed end confirms or corrects it.
END_PROBE_TIMEOUT_S = 15.0


def _confluent_fetched_ends(config: dict, listed: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    wanted = {tp: end for tp, end in listed.items() if end >= 0}
    if not wanted:
        return listed
    # The broker's default fetch wait: Tansu on S3 storage answers a fetch that must wait for its
    # storage with nothing when the wait is short, and a short-waiting probe would never see a record.
    probe = Consumer({**config, "group.id": "streamrec-end-probe", "enable.auto.commit": False,
                      "enable.partition.eof": True})
    ends = dict(listed)
    try:
        probe.assign([TopicPartition(t, p, o) for (t, p), o in wanted.items()])
        open_parts = set(wanted)
        deadline = time.monotonic() + END_PROBE_TIMEOUT_S
        while open_parts and time.monotonic() < deadline:
            msg = probe.poll(0.2)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF and tp in open_parts:
                    ends[tp] = max(wanted[tp], msg.offset())
                    open_parts.discard(tp)
                continue
            if tp in open_parts:
                _low, high = probe.get_watermark_offsets(TopicPartition(*tp), cached=True)
                if high is not None and high > msg.offset():
                    ends[tp] = high
                    open_parts.discard(tp)
        if open_parts:
            raise StackError(f"could not confirm the end offsets of {sorted(open_parts)} in {END_PROBE_TIMEOUT_S}s")
    finally:
        probe.close()
    return ends


def _kafka_python_fetched_ends(config: dict, listed: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
    from kafka import KafkaConsumer, TopicPartition

    wanted = {tp: end for tp, end in listed.items() if end >= 0}
    if not wanted:
        return listed
    probe = KafkaConsumer(**config, group_id=None, enable_auto_commit=False)
    ends = dict(listed)
    try:
        probe.assign([TopicPartition(t, p) for t, p in wanted])
        for (t, p), o in wanted.items():
            probe.seek(TopicPartition(t, p), o)
        open_parts = set(wanted)
        deadline = time.monotonic() + END_PROBE_TIMEOUT_S
        while open_parts and time.monotonic() < deadline:
            probe.poll(timeout_ms=100, max_records=1)
            for tp in list(open_parts):
                high = probe.highwater(TopicPartition(*tp))
                if high is not None:
                    ends[tp] = max(wanted[tp], high)
                    open_parts.discard(tp)
        if open_parts:
            raise StackError(f"could not confirm the end offsets of {sorted(open_parts)} in {END_PROBE_TIMEOUT_S}s")
    finally:
        probe.close(autocommit=False)
    return ends


# --------------------------------------------------------------------------- kafka-python


class _KafkaPythonProducer:
    def __init__(self, bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            **security.kafka_python(),
            bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024, acks=1,
            max_in_flight_requests_per_connection=5,
        )
        self._futures: list = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self._producer.send(topic, value=value, key=key, partition=partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=10)


class _KafkaPythonConsumer:
    def __init__(self, bootstrap: str, group_id: str, session_timeout_ms: int,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        self._probe_config = {**security.kafka_python(), "bootstrap_servers": bootstrap}
        self._consumer = KafkaConsumer(
            **security.kafka_python(),
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 4),
            # kafka-python's rebalance timeout is max.poll.interval.ms; Tansu waits for it too.
            max_poll_interval_ms=max(session_timeout_ms, 10_000),
            partition_assignment_strategy=[RangePartitionAssignor],
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    def subscribe(self, topics, on_assign=None, on_revoke=None) -> None:  # noqa: ANN001
        from kafka import ConsumerRebalanceListener

        consumer = self._consumer

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned) -> None:  # noqa: ANN001
                offsets = (on_assign([(tp.topic, tp.partition) for tp in assigned]) if on_assign else None) or {}
                for tp in assigned:
                    if (tp.topic, tp.partition) in offsets:
                        consumer.seek(tp, offsets[(tp.topic, tp.partition)])

            def on_partitions_revoked(self, revoked) -> None:  # noqa: ANN001
                if on_revoke:
                    on_revoke([(tp.topic, tp.partition) for tp in revoked])

        self._consumer.subscribe(list(topics), listener=_Listener())

    def assign(self, partitions) -> None:  # noqa: ANN001
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def assign_at(self, offsets) -> None:  # noqa: ANN001
        from kafka import TopicPartition

        self._consumer.assign([TopicPartition(t, p) for t, p in offsets])
        for (t, p), o in offsets.items():
            self._consumer.seek(TopicPartition(t, p), o)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        from kafka import TopicPartition

        self._consumer.seek(TopicPartition(topic, partition), offset)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [
            Record(m.topic, m.partition, m.offset, m.key, m.value)
            for records in batches.values() for m in records
        ]

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if offsets:
            self._consumer.commit({
                TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
            })

    def end_offsets(self, partitions, cached: bool = False) -> dict[TopicPartitionKey, int]:  # noqa: ANN001
        from kafka import TopicPartition

        if cached:
            out = {}
            for topic, partition in partitions:
                high = self._consumer.highwater(TopicPartition(topic, partition))
                out[(topic, partition)] = -1 if high is None else high
            return out
        ends = self._consumer.end_offsets([TopicPartition(t, p) for t, p in partitions])
        listed = {(tp.topic, tp.partition): off for tp, off in ends.items()}
        return _kafka_python_fetched_ends(self._probe_config, listed)

    def partition_count(self, topic: str) -> int:
        return len(self._consumer.partitions_for_topic(topic) or ())

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# --------------------------------------------------------------------------- factories and admin


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java, kafka-python and librdkafka's
    ``murmur2_random`` compute it) gives a non-empty ``key``: for producers that batch events of
    one partition into a message and so must choose the partition themselves."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def make_producer(bootstrap: str, client: str = "auto", security: KafkaSecurity = PLAINTEXT) -> EventProducer:
    if resolve_client(client) == "confluent":
        return _ConfluentProducer(bootstrap, security)
    return _KafkaPythonProducer(bootstrap, security)


def make_consumer(bootstrap: str, group_id: str, client: str = "auto",
                  session_timeout_ms: int = 6000, security: KafkaSecurity = PLAINTEXT) -> EventConsumer:
    if resolve_client(client) == "confluent":
        return _ConfluentConsumer(bootstrap, group_id, session_timeout_ms, security)
    return _KafkaPythonConsumer(bootstrap, group_id, session_timeout_ms, security)


def _admin(bootstrap: str, security: KafkaSecurity) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "logger": _RDKAFKA_LOG, **security.confluent()})


def create_topics(bootstrap: str, topics: Iterable[str], partitions: int, timeout_s: float = 30.0,
                  security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the topics that do not exist yet; return the ones created.

    An existing topic with a different partition count is an error: co-partitioning of
    impressions and clicks depends on equal counts.
    """
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap, security)
    existing = admin.list_topics(timeout=timeout_s).topics
    created = []
    wanted = list(topics)
    for topic in wanted:
        if topic in existing:
            have = len(existing[topic].partitions)
            if have != partitions:
                raise ConfigError(f"partitions (STREAMREC_PARTITIONS): topic {topic} exists with {have} "
                                  f"partitions, but {partitions} were asked for")
    missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in wanted if t not in existing]
    if missing:
        for topic, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
            future.result()
            created.append(topic)
    # Metadata can lag creation by a moment; wait until every partition is visible.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=timeout_s).topics
        if all(t in meta and len(meta[t].partitions) == partitions for t in wanted):
            return created
        time.sleep(0.1)
    raise StackError(f"topics {wanted} not visible with {partitions} partitions after {timeout_s}s")


def partition_count(bootstrap: str, topic: str, timeout_s: float = 10.0, security: KafkaSecurity = PLAINTEXT) -> int:
    meta = _admin(bootstrap, security).list_topics(topic, timeout=timeout_s).topics
    if topic not in meta or meta[topic].error is not None or not meta[topic].partitions:
        raise StackError(f"topic {topic} does not exist on {bootstrap}: run `streamrec topics create`")
    return len(meta[topic].partitions)


def broker_reachable(bootstrap: str, timeout_s: float = 2.0, security: KafkaSecurity = PLAINTEXT) -> bool:
    try:
        _admin(bootstrap, security).list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - any failure means "not reachable" here
        return False
    return True
