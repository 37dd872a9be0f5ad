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
from streamrec.producers.replay import ReplayOptions, ResumePositions, replay
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


@pytest.mark.parametrize("per_message, watermark_every_s", [(256, 5.0), (64, 0.7), (1000, 1e9)])
def test_column_replay_sends_the_row_replays_messages(log_file: Path, per_message: int,
                                                      watermark_every_s: float) -> None:
    opts = ReaderOptions(user_field="C1", item_field="C2", seconds_per_row=0.05)
    options = ReplayOptions(seed=5, run_id="cr", events_per_message=per_message, watermark_every_s=watermark_every_s)
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
