"""``streamrec demo``: the whole local loop as far as it is built, with one command.

Today: start (or reuse) the local stack, generate a synthetic stream with a known oracle AUC,
replay it as impression and click events through the broker, read the events back from Kafka to
check that every one arrived, and run the learning core's prequential pass over the same rows.
The trainer worker that learns from the topics themselves (join, checkpoints, Redis versions,
Prometheus) replaces the last step when "The online loop" lands.
"""

from __future__ import annotations

import itertools
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumers.prequential import evaluate_file
from producers.generator import generate, write_stream
from producers.readers import ReaderOptions, read_rows
from producers.replay import ReplayOptions, replay
from stream.kafka_client import create_topics, make_consumer, make_producer
from stream.local_stack import running_stack
from stream.settings import Settings
from stream.topic_reader import records_until_final_watermarks


def count_events(bootstrap: str, client: str, topics: list[str], partitions: int) -> int:
    """Events on ``topics`` up to the final watermark of every partition."""
    consumer = make_consumer(bootstrap, f"demo-check-{uuid.uuid4().hex[:6]}", client)
    try:
        return sum(1 for _ in records_until_final_watermarks(consumer, topics, partitions))
    finally:
        consumer.close()


def run_demo(settings: Settings, *, events: int, model: str, data: Path | None, fmt: str,
             reader_options: ReaderOptions, say: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamrec-demo-") as tmp, running_stack(settings) as endpoints:
        say(f"stack: kafka {endpoints.kafka_bootstrap}, redis {endpoints.redis_url}")
        oracle = None
        if data is None:
            data, fmt = Path(tmp) / "synthetic.tsv", "criteo"
            summary = write_stream(generate(events, seed=0), data, seed=0)
            reader_options = ReaderOptions(user_field="C1", item_field="C2")
            oracle = summary["oracle_auc"]
            say(f"generated {events:,} rows (oracle AUC {oracle:.4f})")
        namespace = f"{settings.namespace}-demo-{uuid.uuid4().hex[:6]}"
        topics = [f"{namespace}.impressions", f"{namespace}.clicks", f"{namespace}.dead-letter"]
        create_topics(endpoints.kafka_bootstrap, topics, settings.partitions)
        producer = make_producer(endpoints.kafka_bootstrap, settings.kafka_client)
        try:
            rows = read_rows(data, fmt, reader_options)
            report = replay(itertools.islice(rows, events), producer, impressions_topic=topics[0],
                            clicks_topic=topics[1], dead_letter_topic=topics[2], partitions=settings.partitions,
                            options=ReplayOptions())
        finally:
            producer.close()
        say(f"replayed {report.impressions:,} impressions + {report.clicks:,} clicks "
            f"at {report.events_per_second:,.0f} events/s")
        consumed = count_events(endpoints.kafka_bootstrap, settings.kafka_client, topics[:2], settings.partitions)
        say(f"read back {consumed:,} events from Kafka")
        result, _ = evaluate_file(data, fmt, model, limit=events, reader_options=reader_options)
        say(f"{model}: AUC {result['auc']:.4f} (window {result['auc_window']:.4f}), logloss {result['logloss']:.4f}, "
            f"{result['examples_per_second']:,.0f} examples/s")
        return {**result, "events_produced": report.impressions + report.clicks, "events_consumed": consumed,
                "dead_letters": report.dead_letters, "oracle_auc": oracle}
