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
        assert state.storage == "durable" and state.s3_pid  # what `stack up` starts unless told otherwise
        assert all(_pid_runs(pid, binary) for _name, pid, binary in state.processes())

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
        assert not any(_pid_runs(pid, binary) for _name, pid, binary in state.processes())
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


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_durable_stack_keeps_topics_offsets_and_versions_across_restarts_and_kills(tmp_path: Path) -> None:
    import signal
    import time

    from streamrec.stream.kafka_client import make_consumer

    home = tmp_path / "home"
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    replay_args = ("--format", "criteo", "--user-field", "C1", "--item-field", "C2")
    # one version per run, at its end: a slow run must not add one on the time cadence
    train = ("--namespace", "keep", "train", "--model", "lr", "--exit-at-end", "--publish-every-s", "600",
             "--report-json")
    try:
        assert _cli(home, "stack", "up").returncode == 0
        assert _cli(home, "--namespace", "keep", "topics", "create", "--partitions", "2").returncode == 0
        for path, rows, seed in ((first, 3000, 3), (second, 1000, 4)):
            assert _cli(home, "generate", "--rows", str(rows), "--seed", str(seed), "--out", str(path)).returncode == 0
        assert _cli(home, "--namespace", "keep", "replay", str(first), *replay_args).returncode == 0
        trained = _cli(home, *train, str(tmp_path / "r0.json"))
        assert trained.returncode == 0, trained.stderr
        before = _report(tmp_path / "r0.json")
        assert before["examples"] == 3000 and before["head_version"] == 1

        def impression_ends() -> dict:
            state = read_state(home)
            assert state is not None
            reader = make_consumer(state.kafka_bootstrap, "end-check")
            try:
                return reader.end_offsets([("keep.impressions", 0), ("keep.impressions", 1)])
            finally:
                reader.close()

        ends_before = impression_ends()
        assert min(ends_before.values()) > 1

        for round_, how in enumerate(("down", "kill -9"), start=1):
            state = read_state(home)
            assert state is not None
            if how == "down":
                assert _cli(home, "stack", "down").returncode == 0
            else:
                for _name, pid, _binary in state.processes():
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while any(_pid_runs(pid, b) for _n, pid, b in state.processes()) and time.monotonic() < deadline:
                    time.sleep(0.05)
            up = _cli(home, "stack", "up")
            assert up.returncode == 0, up.stderr
            restarted = read_state(home)
            assert restarted is not None and restarted.broker_pid != state.broker_pid
            listed = _cli(home, "--namespace", "keep", "models", "--model", "lr", "list")
            assert listed.returncode == 0 and "head v1, live v1" in listed.stdout, (how, listed.stdout, listed.stderr)
            # the log and its exact end survive (the end is confirmed by a fetch: Tansu on S3 lists it short)
            assert impression_ends() == ends_before, how
            again = _cli(home, *train, str(tmp_path / f"r{round_}.json"))
            assert again.returncode == 0, again.stderr
            resumed = _report(tmp_path / f"r{round_}.json")
            assert resumed["examples_this_run"] == 0 and resumed["digest"] == before["digest"], how

        assert _cli(home, "--namespace", "keep", "replay", str(second), *replay_args).returncode == 0
        assert _cli(home, *train, str(tmp_path / "r9.json")).returncode == 0
        after = _report(tmp_path / "r9.json")
        assert after["examples"] == 4000 and after["examples_this_run"] == 1000 and after["head_version"] == 2
    finally:
        if read_state(home) is not None:
            _cli(home, "stack", "down")
