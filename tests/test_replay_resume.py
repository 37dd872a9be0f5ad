"""A replay that stops at any instant and is resumed with its run id sends every event exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.local_stack import Endpoints
from streamrec.producers.column_replay import replay_columns
from streamrec.producers.columns import first_rows, read_columns
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.producers.replay import ReplayOptions, message_order_keys, replay, resume_positions
from streamrec.stream import events
from streamrec.stream.event_columns import encode_columns
from streamrec.stream.kafka_client import create_topics, make_consumer, make_producer
from tests.streams import expected_digest, settings_for, start_trainer

pytestmark = pytest.mark.integration


class _Crash(Exception):
    pass


class _CrashingProducer:
    """Passes ``budget`` messages to a real producer, then fails as a killed process would: what was
    handed over may still be delivered, the rest never is."""

    def __init__(self, inner, budget: int) -> None:  # noqa: ANN001
        self.inner, self.budget = inner, budget

    def send(self, topic, value, key=None, partition=None) -> None:  # noqa: ANN001
        if self.budget == 0:
            raise _Crash
        self.budget -= 1
        self.inner.send(topic, value, key, partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.inner.flush(timeout_s)

    def close(self) -> None:
        self.inner.close()


def test_a_messages_order_keys_are_the_same_from_json_and_from_columns():
    impressions = [events.impression(f"r7-{k}", 10.0 + k, f"u{k}", f"i{k}", {"C3": "a", "I1": k}) for k in range(3)]
    impressions.insert(1, events.impression("other-1", 10.5, "u", "i", {"C3": "b", "I1": 0}))
    clicks = [events.click("c1", "r7-2", 14.5, "u2"), events.click("c2", "r7-x", 15.0, "u3")]
    for batch, keys in ((impressions, [(0.0, 0), (0.0, 1), (0.0, 2)]), (clicks, [(14.5, 2)])):
        as_json = events.encode_batch(batch)
        assert message_order_keys(as_json, "r7") == keys
        assert message_order_keys(encode_columns(batch), "r7") == keys
    assert message_order_keys(events.encode(clicks[0]), "r7") == [(14.5, 2)]  # one keyed event
    assert message_order_keys(b"not an event", "r7") == []


@pytest.mark.parametrize("crashes_after, by_columns", [([0], False), ([9], False), ([3, 20, 41], False),
                                                       ([2, 11, 30], True)])
def test_a_replay_resumed_after_crashes_sends_each_event_once(
        stack: Endpoints, namespace: str, learnable_rows: list, crashes_after: list[int], by_columns: bool,
        tmp_path: Path) -> None:
    rows = learnable_rows[:3000]
    if by_columns:  # the same rows as column chunks (conftest.learnable_rows' file), replayed by replay_columns
        path = tmp_path / "learnable.tsv"
        write_stream(generate(12_000, seed=11), path, seed=11)
        opts = ReaderOptions(user_field="C1", item_field="C2")
        assert [r.user_id for r in read_rows(path, "criteo", opts)][:3000] == [r.user_id for r in rows]
    settings = settings_for(namespace)
    topics = (settings.impressions_topic, settings.clicks_topic)
    create_topics(stack.kafka_bootstrap, [*topics, settings.dead_letter_topic], settings.partitions)
    kwargs = {"impressions_topic": topics[0], "clicks_topic": topics[1],
              "dead_letter_topic": settings.dead_letter_topic, "partitions": settings.partitions}
    positions = None
    for budget in [*crashes_after, None]:
        inner = make_producer(stack.kafka_bootstrap)
        producer = inner if budget is None else _CrashingProducer(inner, budget)
        options = ReplayOptions(run_id="rr", events_per_message=64, watermark_every_s=2.0, resume=positions)
        try:
            if by_columns:
                chunks = first_rows(read_columns(path, "criteo", opts, block_bytes=1 << 15), len(rows))
                report = replay_columns(chunks, producer, options=options, **kwargs)
            else:
                report = replay(rows, producer, options=options, **kwargs)
        except _Crash:
            pass
        finally:
            producer.close()
        reader = make_consumer(stack.kafka_bootstrap, f"{namespace}-resume")
        try:
            positions = resume_positions(reader, topics, settings.partitions, "rr")
        finally:
            reader.close()
    assert report.impressions == len(rows)  # the last run went through the whole log
    trained = start_trainer(stack, settings).wait()
    assert trained["examples"] == len(rows)
    assert trained["join"]["duplicate_impressions"] == 0 and trained["join"]["duplicate_clicks"] == 0
    assert trained["digest"] == expected_digest("rr", rows)
