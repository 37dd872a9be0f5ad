"""`streamrec demo` end to end in a subprocess: it starts its own stack and stops it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _stack_processes(home: Path) -> set[str]:
    """Broker processes, and Redis servers whose --dir is this home."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if "tansu broker" in line or str(home) in line}


def test_demo_runs_the_loop_and_stops_its_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_HOME": str(home), "STREAMREC_PARTITIONS": "2"})
    report_path = tmp_path / "demo.json"
    before = _stack_processes(home)
    result = subprocess.run([sys.executable, "-m", "stream", "demo", "--events", "4000", "--model", "lr",
                             "--report-json", str(report_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["examples"] == 4000 and report["finished"]
    assert report["versions_published"] >= 1 and report["head_version"] == report["versions_published"]
    assert report["join"]["positives"] + report["join"]["negatives"] == 4000
    assert report["events_consumed"] == report["events_produced"] > 4000
    assert report["dead_letters"] == 0
    assert report["auc"] > 0.55 and report["oracle_auc"] > report["auc"]
    # the scorer followed the trainer and answered with the live (here: final) version
    assert report["served"]["version"] == report["head_version"]
    assert len(report["served"]["predictions"]) == 3 and all(0 < p < 1 for p in report["served"]["predictions"])
    assert not (home / "stack.json").exists()
    assert _stack_processes(home) <= before  # nothing it started is left
