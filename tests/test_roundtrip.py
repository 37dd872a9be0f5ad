"""Replay a log through the real broker and read both topics back: nothing lost, nothing twice."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streamrec.local_stack import Endpoints
from streamrec.producers.readers import ReaderOptions, parse_mapping, read_rows
from streamrec.producers.replay import ReplayOptions, replay
from streamrec.stream import events
from streamrec.stream.event_columns import decode_message, is_columnar
from streamrec.stream.kafka_client import Record, create_topics, key_partition, make_consumer, make_producer
from streamrec.stream.topic_reader import records_until_final_watermarks

pytestmark = pytest.mark.integration
PARTITIONS = 3


def _events(records: list[Record]) -> list[tuple[events.Event, Record]]:
    out = []
    for record in records:
        good, bad = decode_message(record.value)
        assert not bad
        out += [(event, record) for event in good]
    return out


@pytest.mark.parametrize(("client", "per_message", "encoding"), [
    ("confluent", 256, "columns"), ("kafka-python", 256, "columns"), ("confluent", 256, "json"),
    ("confluent", 1, "json"), ("kafka-python", 1, "json")])
def test_replay_round_trip_exactly_once(stack: Endpoints, namespace: str, criteo_file: Path, client: str,
                                        per_message: int, encoding: str) -> None:
    topics = [f"{namespace}.impressions", f"{namespace}.clicks", f"{namespace}.dead-letter"]
    create_topics(stack.kafka_bootstrap, topics, PARTITIONS)
    opts = ReaderOptions(user_field="C1", item_field="C2")
    rows = list(read_rows(criteo_file, "criteo", opts))
    producer = make_producer(stack.kafka_bootstrap, client)
    try:
        report = replay(rows, producer, impressions_topic=topics[0], clicks_topic=topics[1],
                        dead_letter_topic=topics[2], partitions=PARTITIONS,
                        options=ReplayOptions(seed=1, run_id="rt", events_per_message=per_message,
                                              encoding=encoding))
    finally:
        producer.close()
    positives = sum(r.label for r in rows)
    assert (report.impressions, report.clicks, report.dead_letters) == (len(rows), positives, 0)

    consumer = make_consumer(stack.kafka_bootstrap, f"{namespace}-check", client)
    try:
        records = list(records_until_final_watermarks(consumer, topics[:2], PARTITIONS, timeout_s=60))
    finally:
        consumer.close()
    impressions = _events([r for r in records if r.topic == topics[0]])
    clicks = _events([r for r in records if r.topic == topics[1]])
    assert len(impressions) == len(rows) and len(clicks) == positives
    messages = len({(r.topic, r.partition, r.offset) for _e, r in impressions + clicks})
    if per_message == 1:
        assert messages == len(rows) + positives
    else:
        assert messages < (len(rows) + positives) / 10  # batched
    assert {is_columnar(r.value) for _e, r in impressions + clicks} == {encoding == "columns"}

    by_id = {}
    for event, record in impressions:
        # the replay's own murmur2 puts a batch where the client's partitioner puts a keyed message
        assert record.partition == key_partition(event["user_id"].encode(), PARTITIONS)
        if per_message == 1:
            assert record.key == event["user_id"].encode()
        by_id[event["event_id"]] = (event, record.partition)
    assert len(by_id) == len(rows)  # no duplicates
    for index, row in enumerate(rows):
        event, _ = by_id[f"rt-{index}"]
        assert (event["user_id"], event["item_id"], event["event_time"], event["features"]) == (
            row.user_id, row.item_id, row.event_time, row.features)

    clicked = set()
    for click, record in clicks:
        impression, partition = by_id[click["impression_id"]]
        assert record.partition == partition  # co-partitioned with its impression
        assert click["event_time"] > impression["event_time"]
        clicked.add(click["impression_id"])
    assert clicked == {f"rt-{i}" for i, r in enumerate(rows) if r.label}


def test_invalid_events_go_to_dead_letter(stack: Endpoints, namespace: str, tmp_path: Path) -> None:
    topics = [f"{namespace}.impressions", f"{namespace}.clicks", f"{namespace}.dead-letter"]
    create_topics(stack.kafka_bootstrap, topics, 1)
    path = tmp_path / "d.csv"
    # "inf" parses as a float, so this row passes the reader and must be caught by validation.
    path.write_text("y,u,price\n1,a,1.5\n0,b,inf\n")
    rows = list(read_rows(path, "csv", ReaderOptions(mapping=parse_mapping("label=y,user=u", "price"))))
    assert len(rows) == 2
    producer = make_producer(stack.kafka_bootstrap)
    try:
        report = replay(rows, producer, impressions_topic=topics[0], clicks_topic=topics[1],
                        dead_letter_topic=topics[2], partitions=1)
    finally:
        producer.close()
    assert (report.impressions, report.dead_letters) == (1, 1)
    consumer = make_consumer(stack.kafka_bootstrap, f"{namespace}-dl")
    try:
        consumer.assign([(topics[2], 0)])
        deadline = time.monotonic() + 30
        got: list[Record] = []
        while not got and time.monotonic() < deadline:
            got = consumer.poll(10, 0.5)
    finally:
        consumer.close()
    [record] = got
    letter = orjson.loads(record.value)
    assert "finite" in letter["reason"] and letter["source"] == "replay"
    assert orjson.loads(letter["payload"])["user_id"] == "b"
