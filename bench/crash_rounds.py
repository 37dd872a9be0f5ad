"""The whole system under kill -9: every part of the loop killed at random instants while a log streams.

    python bench/crash_rounds.py --rows 20000 --rate 800 --rounds 2

On a durable local stack, a paced `streamrec replay`, one `streamrec join` worker, one
`streamrec train --from-examples` (lr, gate off) and one `streamrec serve` run as separate processes.
Every ``--every-s`` seconds one of them, or the broker, Redis or the S3 server under the broker, gets
SIGKILL; after ``--down-s`` it is restarted the way an operator (or a supervisor) would: the stack's
process by `streamrec stack up` (which restarts it alone on its ports), the replay with
``--run-id ... --resume``, a worker with the same command. A worker that exits on its own with an
error is restarted too, and counted. Each of the seven parts is killed once per round, in a random
order (``--seed``).

At the end: the trainer's examples and digest against the log's (every impression trained once with
its label), the join's duplicate counters, the scorer serving the trainer's newest version, and the
seconds each part was unavailable (kill to ready again). ``tests/test_whole_system_crashes.py`` runs
this with a smaller log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.consumers.worker_counters import example_digest  # noqa: E402
from streamrec.local_stack import read_state, stop_stack  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402

STACK_PARTS = ("broker", "redis", "s3")
WORKERS = ("replay", "join", "trainer", "scorer")
RUN_ID = "crash"


@dataclass
class Worker:
    """One supervised `streamrec` process: started, killed and started again."""

    name: str
    args: list[str]
    env: dict[str, str]
    folder: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    knock_on_restarts: int = 0
    ready_file: Path | None = None

    def start(self, resume: bool = False) -> None:
        self.starts += 1
        self.ready_file = self.folder / f"{self.name}-{self.starts}.ready.json"
        args = [*self.args, *(["--resume"] if resume else [])]
        if self.name != "replay":
            args += ["--ready-file", str(self.ready_file)]
        log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen([sys.executable, "-m", "streamrec", *args], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def finished(self) -> bool:
        """Exited by itself with success (the end of the stream)."""
        return self.process is not None and self.process.poll() == 0

    def ready(self) -> bool:
        if self.name == "replay":
            return self.running() or (self.process is not None and self.process.returncode == 0)
        return self.ready_file is not None and self.ready_file.exists()

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class CrashReport:
    """What the rounds did and what the loop kept."""

    kills: list[dict] = field(default_factory=list)
    knock_on_restarts: dict[str, int] = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    join: dict = field(default_factory=dict)
    expected_examples: int = 0
    expected_digest: str = ""
    served_version: int | None = None
    wall_seconds: float = 0.0

    def downtime(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for kill in self.kills:
            out.setdefault(kill["part"], []).append(kill["unavailable_s"])
        return out


def _cli(env: dict[str, str], *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def _healthz(ready_file: Path) -> dict | None:
    try:
        port = json.loads(ready_file.read_text())["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError, KeyError):
        return None


def run_rounds(folder: Path, rows: int, rate: float, rounds: int, every_s: float, down_s: float, seed: int,
               timeout_s: float = 300.0, parts: tuple[str, ...] = STACK_PARTS + WORKERS,
               shuffle: bool = True) -> CrashReport:
    """Stream ``rows`` rows at ``rate`` events/s through the loop while killing a part every ``every_s``:
    each of ``parts`` once per round, in a random order (or as given, without ``shuffle``)."""
    started = time.monotonic()
    home, data = folder / "home", folder / "stream.tsv"
    write_stream(generate(rows, seed=seed), data, seed=seed)
    read = list(read_rows(data, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
    digest = example_digest([f"{RUN_ID}-{i}" for i in range(len(read))], [r.label for r in read])
    report = CrashReport(expected_examples=len(read), expected_digest=f"{digest:016x}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_HOME": str(home), "STREAMREC_NAMESPACE": "crash"})
    up = _cli(env, "stack", "up")
    if up.returncode != 0:
        raise RuntimeError(f"stack up failed: {up.stderr}")
    workers: dict[str, Worker] = {}
    try:
        topics = _cli(env, "topics", "create", "--partitions", "2")
        if topics.returncode != 0:
            raise RuntimeError(topics.stderr)
        trainer_report = folder / "trainer.json"
        join_report = folder / "join.json"
        commands = {
            "replay": ["replay", str(data), "--format", "criteo", "--user-field", "C1", "--item-field", "C2",
                       "--rate", str(rate), "--run-id", RUN_ID, "--events-per-message", "32"],
            "join": ["join", "--exit-at-end", "--metrics-port", "0", "--report-json", str(join_report)],
            "trainer": ["train", "--from-examples", "--model", "lr", "--no-gate", "--exit-at-end",
                        "--metrics-port", "0", "--publish-every-s", "2", "--report-json", str(trainer_report)],
            "scorer": ["serve", "--model", "lr", "--port", "0", "--poll-s", "0.2"],
        }
        for name in ("scorer", "join", "trainer", "replay"):
            workers[name] = Worker(name, commands[name], env, folder)
            workers[name].start()
        rng = random.Random(seed)
        victims = [part for _ in range(rounds) for part in (rng.sample(parts, len(parts)) if shuffle else parts)]
        next_kill = time.monotonic() + every_s
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the loop did not finish within {timeout_s}s; logs in {folder}")
            for name, worker in workers.items():
                if not worker.running() and not worker.finished():
                    report.knock_on_restarts[name] = report.knock_on_restarts.get(name, 0) + 1
                    worker.start(resume=name == "replay")
            done = workers["replay"].finished() and workers["trainer"].finished()
            if done and not victims:
                break
            if victims and time.monotonic() >= next_kill:
                part = victims.pop(0)
                report.kills.append(_kill_and_restart(part, home, env, workers, down_s))
                next_kill = time.monotonic() + every_s
            time.sleep(0.05)
        report.trainer = json.loads(trainer_report.read_text())
        # the scorer follows the trainer's newest version (the gate is off, so newest is live)
        scorer = workers["scorer"]
        wait_until = time.monotonic() + 30
        while time.monotonic() < wait_until:
            health = _healthz(scorer.ready_file) if scorer.ready_file else None
            if health and health.get("version") == report.trainer["head_version"]:
                break
            time.sleep(0.2)
        report.served_version = (health or {}).get("version")
        join_worker = workers["join"]
        if join_worker.process is not None and join_worker.process.poll() is None:
            join_worker.process.wait(30)
        if join_report.exists():
            report.join = json.loads(join_report.read_text())
    finally:
        for worker in workers.values():
            worker.stop()
        if read_state(home) is not None:
            stop_stack(home)
    report.wall_seconds = time.monotonic() - started
    return report


def _kill_and_restart(part: str, home: Path, env: dict[str, str], workers: dict[str, Worker],
                      down_s: float) -> dict:
    killed_at = time.monotonic()
    if part in STACK_PARTS:
        state = read_state(home)
        assert state is not None
        pid = {"broker": state.broker_pid, "redis": state.redis_pid, "s3": state.s3_pid}[part]
        os.kill(pid, signal.SIGKILL)
        time.sleep(down_s)
        up = _cli(env, "stack", "up")
        if up.returncode != 0:
            raise RuntimeError(f"stack up after killing {part}: {up.stderr}")
        return {"part": part, "unavailable_s": time.monotonic() - killed_at, "was_running": True}
    worker = workers[part]
    if not worker.running():
        return {"part": part, "unavailable_s": 0.0, "was_running": False}
    worker.kill()
    time.sleep(down_s)
    worker.start(resume=part == "replay")
    wait_until = time.monotonic() + 60
    while not worker.ready() and worker.running() and time.monotonic() < wait_until:
        time.sleep(0.02)
    return {"part": part, "unavailable_s": time.monotonic() - killed_at, "was_running": True}


def main() -> None:
    from bench._common import write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=800.0, help="Replay pace, events/s.")
    parser.add_argument("--rounds", type=int, default=2, help="Each part is killed once per round.")
    parser.add_argument("--every-s", type=float, default=2.0)
    parser.add_argument("--down-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="crash_rounds")
    parser.add_argument("--folder", type=Path, help="Keep the stack's data and the processes' logs here.")
    parser.add_argument("--parts", default=",".join(STACK_PARTS + WORKERS),
                        help="Comma-separated parts to kill: " + ", ".join(STACK_PARTS + WORKERS) + ".")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        unknown = sorted(set(parts) - set(STACK_PARTS + WORKERS))
        if unknown:
            parser.error(f"--parts: unknown {', '.join(unknown)}")
        report = run_rounds(folder, args.rows, args.rate, args.rounds, args.every_s, args.down_s, args.seed,
                            parts=parts)
    trainer = report.trainer
    lost_or_doubled = trainer["examples"] - report.expected_examples
    print("kills in order: " + ", ".join(k["part"] + ("" if k["was_running"] else " (not running)")
                                         for k in report.kills))
    print(f"{len(report.kills)} kills ({sum(k['was_running'] for k in report.kills)} of running parts) in "
          f"{report.wall_seconds:.0f}s; knock-on restarts {report.knock_on_restarts or 'none'}")
    for part, times in sorted(report.downtime().items()):
        print(f"  {part:>7}: unavailable {', '.join(f'{t:.1f}s' for t in times)}")
    print(f"trained {trainer['examples']:,} of {report.expected_examples:,} impressions "
          f"(difference {lost_or_doubled}); digest {'exact' if trainer['digest'] == report.expected_digest else 'WRONG'}; "
          f"scorer serves v{report.served_version} (trainer's newest v{trainer['head_version']}); join duplicates "
          f"{report.join.get('duplicate_impressions')}/{report.join.get('duplicate_clicks')}")
    write_result(args.name, {
        "parts": list(parts), "rows": args.rows, "rate": args.rate, "rounds": args.rounds, "every_s": args.every_s, "down_s": args.down_s,
        "seed": args.seed, "data": "synthetic (producers/generator.py)", "kills": report.kills,
        "knock_on_restarts": report.knock_on_restarts, "downtime_s": report.downtime(),
        "examples": trainer["examples"], "expected_examples": report.expected_examples,
        "digest_exact": trainer["digest"] == report.expected_digest, "served_version": report.served_version,
        "head_version": trainer["head_version"], "join": report.join, "wall_seconds": report.wall_seconds,
    })


if __name__ == "__main__":
    main()
