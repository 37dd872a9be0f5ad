"""`streamrec demo` end to end in a subprocess: it starts its own stack and stops it again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _stack_processes(home: Path) -> set[str]:
    """Broker processes, Redis servers whose --dir is this home, and streamrec children."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    children = ("-m streamrec serve", "-m streamrec train", "-m streamrec dashboard", "-m streamrec replay", "-m streamrec join")
    return {line.split()[0] for line in out.splitlines()
            if "tansu broker" in line or str(home) in line or any(c in line for c in children)}


def _demo_env(home: Path) -> dict[str, str]:
    """The caller's environment without STREAMREC_ settings, with its own home and 2 partitions."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return {**env, "STREAMREC_HOME": str(home), "STREAMREC_PARTITIONS": "2"}


def test_demo_runs_the_loop_and_stops_its_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _demo_env(home)
    report_path = tmp_path / "demo.json"
    before = _stack_processes(home)
    process = subprocess.Popen([sys.executable, "-m", "streamrec", "demo", "--events", "10000", "--model", "lr",
                                "--report-json", str(report_path), "--dashboard", "--dashboard-port", "0",
                                "--linger-s", "30"], env={**env, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # With --dashboard the run ends by keeping the dashboard up: it saw the trainer and scorer.
        lines = []
        for line in process.stderr:  # the console (progress, summary) is on stderr, the JSON report on stdout
            lines.append(line)
            if "the dashboard stays up at" in line:
                break
        url = re.search(r"the dashboard stays up at (\S+)", "".join(lines))
        assert url, "".join(lines)
        with urllib.request.urlopen(url.group(1) + "api/metrics", timeout=5) as response:
            board = json.loads(response.read())
        roles = {w["role"]: w for w in board["workers"]}
        assert set(roles) == {"trainer", "scorer"}
        # The trainer is gone; its final numbers stayed in its registry record.
        assert roles["trainer"]["stopped"] and roles["trainer"]["points"][-1][1]["examples"] == 10000
        assert [e["kind"] for e in board["timeline"]["lr"]][:1] == ["published"]
        process.send_signal(signal.SIGINT)  # Ctrl-C ends the wait and stops everything
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # a failed assertion: let the demo stop what it started
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["dashboard"] == url.group(1)
    assert report["examples"] == 10000 and report["finished"]
    assert report["versions_published"] >= 1 and report["head_version"] == report["versions_published"]
    assert report["join"]["positives"] + report["join"]["negatives"] == 10000
    assert report["events_consumed"] == report["events_produced"] > 10000
    assert report["dead_letters"] == 0
    assert report["auc"] > 0.55 and report["oracle_auc"] > report["auc"]
    # the scorer followed the trainer and answered with the live (here: final) version
    assert report["served"]["version"] == report["head_version"]
    assert len(report["served"]["predictions"]) == 3 and all(0 < p < 1 for p in report["served"]["predictions"])
    assert not (home / "stack.json").exists()
    assert _stack_processes(home) <= before  # nothing it started is left


def test_demo_with_a_join_stage_trains_every_event_once_and_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _demo_env(home)
    report_path = tmp_path / "demo.json"
    before = _stack_processes(home)
    done = subprocess.run([sys.executable, "-m", "streamrec", "demo", "--events", "6000", "--model", "lr",
                           "--join-workers", "2", "--report-json", str(report_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "join pids" in done.stderr and ".examples" in done.stderr
    report = json.loads(report_path.read_text())
    assert report["join_workers"] == 2
    assert report["examples"] == 6000 and report["finished"] and report["dead_letters"] == 0
    # the trainer read examples, not events: the join's counts are the join workers'
    assert report["events_consumed"] == 0 and report["join"]["positives"] == 0
    assert report["served"]["version"] == report["head_version"]
    assert _stack_processes(home) <= before
