"""Stack lifecycle through the real CLI: up, status, down, and no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.local_stack import _pid_runs, read_state

pytestmark = pytest.mark.integration


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "streamrec", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_up_status_down_leaves_no_orphans(tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = None
    try:
        up = _cli(home, "stack", "up")
        assert up.returncode == 0, up.stderr
        state = read_state(home)
        assert state is not None
        assert _pid_runs(state.broker_pid, state.broker_bin) and _pid_runs(state.redis_pid, state.redis_bin)

        again = _cli(home, "stack", "up")
        assert again.returncode == 0 and "already running" in again.stderr
        assert read_state(home) == state  # nothing new was started

        status = _cli(home, "stack", "status", "--json")
        assert status.returncode == 0
        reported = json.loads(status.stdout)
        assert reported["running"] and reported["kafka_bootstrap"] == state.kafka_bootstrap

        topics = _cli(home, "--namespace", "lifecycle", "topics", "create", "--partitions", "3")
        assert topics.returncode == 0, topics.stderr
        assert "lifecycle.impressions: created (3 partitions)" in topics.stdout

        down = _cli(home, "stack", "down")
        assert down.returncode == 0, down.stderr
        assert not _pid_runs(state.broker_pid, state.broker_bin)
        assert not _pid_runs(state.redis_pid, state.redis_bin)
        assert read_state(home) is None
        assert _cli(home, "stack", "status").returncode == 1
    finally:
        if state is not None and read_state(home) is not None:
            _cli(home, "stack", "down")


def test_commands_without_stack_say_what_to_do(tmp_path: Path) -> None:
    result = _cli(tmp_path / "empty", "topics", "create")
    assert result.returncode == 4
    assert "streamrec stack up" in result.stderr


def test_a_redis_restarted_by_hand_on_its_port_is_still_the_stack(tmp_path: Path) -> None:
    import signal
    import time

    from streamrec.local_stack import redis_binary

    home = tmp_path / "home"
    by_hand = None
    try:
        assert _cli(home, "stack", "up").returncode == 0
        state = read_state(home)
        assert state is not None
        os.kill(state.redis_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_runs(state.redis_pid, state.redis_bin) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = state.redis_url.rsplit(":", 1)[1].split("/")[0]
        by_hand = subprocess.Popen([redis_binary(), "--port", port, "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            status = json.loads(_cli(home, "stack", "status", "--json").stdout)
            if status["running"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status["running"] and status["stale_pids"] == ["redis"]
        listed = _cli(home, "models", "list")
        assert listed.returncode == 0 and "no versions" in listed.stdout, listed.stderr
        down = _cli(home, "stack", "down")
        assert down.returncode == 0 and by_hand.poll() is None  # only the pids the stack started are stopped
    finally:
        if by_hand is not None:
            by_hand.terminate()
            by_hand.wait(10)
        if read_state(home) is not None:
            _cli(home, "stack", "down")


def test_a_killed_process_nobody_has_reaped_is_not_running() -> None:
    # Where pid 1 does not reap orphans (some containers), a killed server lingers as a zombie.
    import shutil
    import signal
    import time

    sleeper = shutil.which("sleep")
    assert sleeper is not None
    proc = subprocess.Popen([sleeper, "30"])
    try:
        time.sleep(0.1)
        assert _pid_runs(proc.pid, sleeper)
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.3)  # not reaped: the pid is a zombie until wait()
        assert not _pid_runs(proc.pid, sleeper)
    finally:
        proc.kill()
        proc.wait(10)
