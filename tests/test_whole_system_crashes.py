"""The whole loop under kill -9 (bench/crash_rounds.py): replay, join worker, trainer, scorer, Redis
and the S3 server under the broker, each killed while a paced log streams and restarted as an
operator would; every impression is trained once with its label and the scorer serves the newest
version. The broker's own kills are in bench/crash_rounds.py (docs/local-stack.md); here its S3
server is killed under it, which makes it refuse writes for a moment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.crash_rounds import run_rounds

pytestmark = pytest.mark.integration


def test_every_part_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    parts = ("replay", "join", "redis", "trainer", "s3", "scorer")
    report = run_rounds(tmp_path, rows=4000, rate=200.0, rounds=1, every_s=1.5, down_s=0.3, seed=2,
                        timeout_s=240.0, parts=parts, shuffle=False)
    assert [kill["part"] for kill in report.kills] == list(parts)
    assert all(kill["was_running"] for kill in report.kills), report.kills
    assert report.trainer["examples"] == report.expected_examples
    assert report.trainer["digest"] == report.expected_digest
    assert report.served_version == report.trainer["head_version"]
    assert report.join["finished"]
