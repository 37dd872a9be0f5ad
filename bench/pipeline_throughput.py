"""Replay (produce) and consume throughput for both Kafka clients against the embedded Tansu broker.

    python bench/pipeline_throughput.py --rows 200000

Broker and clients share this machine's cores, as in the demo. Each client replays twice: one
event per message, and event batches of 256 (the replay's default); rates are events per second
(a consumed event is counted by its ``"schema"`` key without decoding, or decoded). Events go as
JSON here, the clients' own throughput; bench/online_loop.py ``--encodings json,columns`` compares
the columnar batches the replay sends by default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402
from streamrec.producers.replay import ReplayOptions, replay  # noqa: E402
from streamrec.stream import events  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_consumer, make_producer  # noqa: E402


def consume_all(bootstrap: str, client: str, topics: list[str], partitions: int, expected: int,
                decode: bool) -> tuple[float, int, float]:
    consumer = make_consumer(bootstrap, f"bench-{uuid.uuid4().hex[:6]}", client)
    try:
        started = time.perf_counter()
        consumer.assign([(t, p) for t in topics for p in range(partitions)])
        seen = 0
        deadline = started + 300
        while seen < expected and time.perf_counter() < deadline:
            records = consumer.poll(10_000, 0.5)
            if decode:
                for record in records:
                    seen += len(events.decode_events(record.value)[0])
            else:
                seen += sum(record.value.count(b'"schema":') for record in records)
        wall = time.perf_counter() - started
    finally:
        consumer.close()
    return seen / wall, seen, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "s.tsv"
        write_stream(generate(args.rows, seed=1), data, seed=1)
        rows = list(read_rows(data, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
        state = start_stack(Path(tmp) / "home")
        results = {}
        try:
            for client, per_message in [(c, n) for c in ("confluent", "kafka-python") for n in (1, 256)]:
                ns = f"bench{uuid.uuid4().hex[:6]}"
                topics = [f"{ns}.impressions", f"{ns}.clicks", f"{ns}.dead-letter"]
                create_topics(state.kafka_bootstrap, topics, args.partitions)
                producer = make_producer(state.kafka_bootstrap, client)
                try:
                    report = replay(iter(rows), producer, impressions_topic=topics[0], clicks_topic=topics[1],
                                    dead_letter_topic=topics[2], partitions=args.partitions,
                                    options=ReplayOptions(events_per_message=per_message, encoding="json"))
                finally:
                    producer.close()
                expected = report.impressions + report.clicks + 2 * args.partitions
                raw_rate, seen, _ = consume_all(state.kafka_bootstrap, client, topics[:2], args.partitions, expected, False)
                decoded_rate, _, _ = consume_all(state.kafka_bootstrap, client, topics[:2], args.partitions, expected, True)
                name = f"{client}, {per_message} per message"
                results[name] = {"replay_events_per_second": report.events_per_second,
                                 "replay_wall_seconds": report.wall_seconds,
                                 "consume_events_per_second": raw_rate,
                                 "consume_decode_events_per_second": decoded_rate, "consumed": seen,
                                 "events": expected}
                print(name, results[name], flush=True)
        finally:
            stop_stack(Path(tmp) / "home")
    write_result("pipeline_throughput", {"rows": args.rows, "partitions": args.partitions,
                                         "data": "producers.generator seed 1", "results": results})


if __name__ == "__main__":
    main()
