"""The replay over column chunks sends what the row replay sends with columnar batches: the same
events, in the same messages, to the same partitions, with the same dead letters and watermarks."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamrec.producers.column_replay import replay_columns
from streamrec.producers.columns import read_columns
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.producers.replay import ReplayOptions, ResumePositions, replay, watermark_min_rows
from streamrec.stream.event_columns import decode_message, is_columnar

TOPICS = {"impressions_topic": "imp", "clicks_topic": "clk", "dead_letter_topic": "dlq"}


class _Recorder:
    """Keeps what a replay hands its producer, in order (the replay's output, not a broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self.sent.append((topic, value, key, partition))

    def flush(self, timeout_s: float = 30.0) -> None:
        pass


def _messages(recorder: _Recorder) -> dict[tuple[str, int | None], list]:
    """Per (topic, partition): each message as (columnar?, its events), dead letters as their records."""
    out: dict[tuple[str, int | None], list] = {}
    for topic, value, _key, partition in recorder.sent:
        if topic == "dlq":
            record = orjson.loads(value)
            out.setdefault((topic, None), []).append((record["reason"], orjson.loads(record["payload"])))
        else:
            good, bad = decode_message(value)
            assert not bad
            out.setdefault((topic, partition), []).append((is_columnar(value), good))
    return out


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("column_replay") / "stream.tsv"
    write_stream(generate(6000, seed=3), path, seed=3)
    lines = path.read_text().splitlines()
    # a user id longer than an id may be: a dead letter of either path
    parts = lines[10].split("\t")
    parts[15] = "u" * 300
    lines[10] = "\t".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("per_message, watermark_every_s, min_rows",
                         [(256, 5.0, None), (64, 0.7, None), (64, 0.7, 0), (100, 0.7, 333), (1000, 1e9, None)])
def test_column_replay_sends_the_row_replays_messages(log_file: Path, per_message: int,
                                                      watermark_every_s: float, min_rows: int | None) -> None:
    opts = ReaderOptions(user_field="C1", item_field="C2", seconds_per_row=0.05)
    options = ReplayOptions(seed=5, run_id="cr", events_per_message=per_message, watermark_every_s=watermark_every_s,
                            watermark_min_rows=min_rows)
    by_rows, by_columns = _Recorder(), _Recorder()
    rows_report = replay(read_rows(log_file, "criteo", opts), by_rows, partitions=3, options=options, **TOPICS)
    columns_report = replay_columns(read_columns(log_file, "criteo", opts, block_bytes=1 << 16), by_columns,
                                    partitions=3, options=options, **TOPICS)
    assert rows_report.dead_letters == columns_report.dead_letters == 1
    assert (rows_report.impressions, rows_report.clicks) == (columns_report.impressions, columns_report.clicks)
    expected, got = _messages(by_rows), _messages(by_columns)
    assert set(expected) == set(got)
    for key in expected:
        assert got[key] == expected[key], key
    assert sum(e["type"] == "impression" for (topic, _p), messages in got.items() if topic == "imp"
               for _c, events in messages for e in events) == rows_report.impressions
    assert any(columnar for (topic, _p), messages in got.items() if topic != "dlq" for columnar, _e in messages)


def test_an_unpaced_replay_lets_a_messages_worth_of_rows_pass_between_watermarks(log_file: Path) -> None:
    """Rows 50 ms apart and a watermark every 0.7 s would flush every buffer every 14 rows; by
    default an unpaced replay waits for events_per_message x partitions rows, so messages fill up."""
    opts = ReaderOptions(user_field="C1", item_field="C2", seconds_per_row=0.05)
    sizes = {}
    for min_rows in (None, 0):
        recorder = _Recorder()
        options = ReplayOptions(seed=5, run_id="cr", events_per_message=64, watermark_every_s=0.7,
                                watermark_min_rows=min_rows)
        replay(read_rows(log_file, "criteo", opts), recorder, partitions=3, options=options, **TOPICS)
        # the impressions topic in order: a number per message of impressions, "w" per watermark
        sent = [decode_message(value)[0] for topic, value, _k, _p in recorder.sent if topic == "imp"]
        stream = ["w" if events[0]["type"] == "watermark" else len(events) for events in sent]
        rounds, rows = [], 0  # rows sent between consecutive rounds of watermarks (one per partition)
        for item in stream:
            if item == "w":
                if rows:
                    rounds.append(rows)
                rows = 0
            else:
                rows += item
        if min_rows is None:
            assert min(rounds[:-1]) >= 64 * 3  # a message's worth per partition passes before the next round
        else:
            assert max(rounds) <= 16  # event time alone: every 14 or 15 rows
        messages = [item for item in stream if item != "w"]
        sizes[min_rows] = sum(messages) / len(messages)
    assert sizes[None] > 4 * sizes[0]
    assert watermark_min_rows(ReplayOptions(rate=100.0), 3) == watermark_min_rows(
        ReplayOptions(events_per_message=1), 3) == 0
    with pytest.raises(ValueError, match="watermark_min_rows"):
        ReplayOptions(watermark_min_rows=-1)


def test_a_resumed_column_replay_skips_what_reached_each_partition(log_file: Path) -> None:
    opts = ReaderOptions(user_field="C1", item_field="C2", seconds_per_row=0.05)
    # as if an earlier run had delivered impressions up to row 2000 and clicks up to t on each partition
    last = {("imp", p): (0.0, 2000) for p in range(3)} | {("clk", p): (1.7e9 + 80.0, 1500) for p in range(3)}
    options = ReplayOptions(seed=5, run_id="cr", resume=ResumePositions("cr", last))
    by_rows, by_columns = _Recorder(), _Recorder()
    replay(read_rows(log_file, "criteo", opts), by_rows, partitions=3, options=options, **TOPICS)
    replay_columns(read_columns(log_file, "criteo", opts, block_bytes=1 << 16), by_columns, partitions=3,
                   options=options, **TOPICS)
    expected, got = _messages(by_rows), _messages(by_columns)
    assert got == expected
    assert ("dlq", None) not in got  # the bad row (10) was delivered by the earlier run


def test_column_replay_refuses_what_it_cannot_do_alike(log_file: Path) -> None:
    chunks = read_columns(log_file, "criteo", ReaderOptions(user_field="C1", item_field="C2"))
    for options in (ReplayOptions(rate=100.0), ReplayOptions(encoding="json"), ReplayOptions(events_per_message=1)):
        with pytest.raises(ValueError):
            replay_columns(chunks, _Recorder(), partitions=3, options=options, **TOPICS)
