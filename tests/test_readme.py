"""The README's "Everyday use" block, run line by line in order against the embedded stack.

Every command line of the block is run, with small row counts and free ports instead of fixed
ones; servers (`train` without `--exit-at-end`, `serve`, `dashboard`) run in the background until
the lines that talk to them (`curl ...`) have been checked. A line this test does not know makes it
fail, so the README cannot grow a command that nobody ran.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"
ROWS = 3000


def everyday_commands() -> list[str]:
    """The block's commands: comments dropped, continuation lines joined."""
    block = README.read_text().split("## Everyday use", 1)[1].split("```", 2)[1]
    commands: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if pending:
            line, pending = pending + " " + line.strip(), ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        commands.append(" ".join(line.split()))
    assert not pending, "a continuation line ends the block"
    return commands


class Session:
    """The shell a reader would have: one STREAMREC_HOME, one working folder, background servers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        # small row counts: versions every 1,000 examples, so rollback and promote have versions to move
        self.env.update({"STREAMREC_HOME": str(folder / "home"), "STREAMREC_PUBLISH_EVERY_EXAMPLES": "1000"})
        self.background: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.last_replay: list[str] = []

    def run(self, args: list[str], timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "streamrec", *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, f"streamrec {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        return done

    def start(self, name: str, args: list[str], port_key: str) -> int:
        ready = self.folder / f"{name}.ready.json"
        ready.unlink(missing_ok=True)  # a server of the same name ran before
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - the child holds it
        self.background[name] = subprocess.Popen([sys.executable, "-m", "streamrec", *args, "--ready-file", str(ready)],
                                                 cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert self.background[name].poll() is None, (self.folder / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.05)
        self.ports[name] = int(json.loads(ready.read_text())[port_key])
        return self.ports[name]

    def stop(self, name: str) -> None:
        process = self.background.pop(name)
        process.send_signal(signal.SIGTERM)  # a trainer publishes what it learned, then exits
        try:
            # uvicorn shuts down cleanly, then re-raises the signal: -SIGTERM is a clean stop of a server
            assert process.wait(60) in (0, -signal.SIGTERM), (self.folder / f"{name}.log").read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def close(self) -> None:
        for process in self.background.values():
            process.kill()
            process.wait()
        subprocess.run([sys.executable, "-m", "streamrec", "stack", "down"], env=self.env, capture_output=True,
                       timeout=60)

    def head_version(self) -> int:
        return int(json.loads(self.run(["models", "list", "--json"]).stdout)["head"])


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _write_libfm(path: Path, rows: int) -> None:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(rows):
        fields = [rng.randrange(50), rng.randrange(40), *(rng.randrange(5) for _ in range(4))]
        label = 1 if (fields[0] + fields[1]) % 3 == 0 or rng.random() < 0.1 else -1
        lines.append(f"{label} " + " ".join(f"{k * 100 + v}:1" for k, v in enumerate(fields)))
    path.write_text("\n".join(lines) + "\n")


def _train_until_trained(session: Session, args: list[str], examples: int) -> int:
    port = session.start("train", args, "metrics_port")
    deadline = time.monotonic() + 180
    while True:
        _status, text = _get(f"http://127.0.0.1:{port}/metrics")
        match = re.search(r"^streamrec_examples_trained_total\{[^}]*\} (\S+)$", text, re.M)
        if match and float(match.group(1)) >= examples:
            return port
        assert time.monotonic() < deadline, f"the trainer did not reach {examples} examples:\n{text[-2000:]}"
        time.sleep(0.3)


def test_every_everyday_use_line_runs_in_order(tmp_path: Path) -> None:
    session = Session(tmp_path)
    covered = []
    replayed = 0
    try:
        for command in everyday_commands():
            args = shlex.split(command) if not command.startswith("curl") else command.split()
            if args[0] == "streamrec" and args[1:3] == ["stack", "up"] or args[1:3] in (["stack", "status"],
                                                                                     ["stack", "down"]):
                session.run(args[1:])
            elif args[1:3] == ["topics", "create"]:
                session.run(args[1:])
            elif args[1] == "generate":
                args[args.index("--rows") + 1] = str(ROWS)
                session.run(args[1:])
            elif args[1] == "replay":
                if "..." in args:
                    at = args.index("...")
                    args = args[:at] + session.last_replay[3:] + args[at + 1:]  # "..": the options above
                else:
                    session.last_replay = [a for a in args if a not in ("--report-json", "replay.json")]
                session.run(args[1:])
                replayed += ROWS
            elif args[1] == "evaluate":
                if args[2] == "frappe.libfm":  # the README says where the real file comes from
                    _write_libfm(tmp_path / "frappe.libfm", ROWS)
                session.run(args[1:])
            elif args[1] == "train" and "--ranks" in args:
                report = tmp_path / "ranks.json"
                session.run([*args[1:], "--metrics-port", "0", "--report-json", str(report)])
                summary = json.loads(report.read_text())
                assert summary["examples"] == replayed and summary["ranks"] == 2, summary
            elif args[1] == "train" and "--from-examples" not in args:
                port_at = args.index("--metrics-port") + 1
                args[port_at] = "0"
                _train_until_trained(session, args[1:], replayed)
            elif command.startswith("curl -s localhost:9400/metrics"):
                status, text = _get(f"http://127.0.0.1:{session.ports['train']}/metrics")
                assert status == 200 and "streamrec_auc" in text
                session.stop("train")  # publishes its last version
            elif args[1] == "serve":
                args[args.index("--port") + 1] = "0"
                session.start("serve", args[1:], "port")
            elif command.startswith("curl -s localhost:8400/predict -d "):
                body = command.split(" -d ", 1)[1].strip().strip("'")
                status, text = _get(f"http://127.0.0.1:{session.ports['serve']}/predict", body.encode(),
                                    {"Content-Type": "application/json"})
                assert status == 200 and len(json.loads(text)["predictions"]) == 1, text
                session.stop("serve")
            elif args[1] == "models":
                for part in command.split(" ", 1)[1].split(" / "):
                    words = shlex.split(part)
                    if words[0] != "models":  # "promote 12 / pin / unpin / show 12"
                        words = ["models", *words]
                    head = session.head_version()
                    words = [str(head - 1) if w.isdigit() and int(w) >= head else w for w in words]
                    session.run(words)
            elif command == "streamrec join & streamrec join &":
                # the scaled-out join in a namespace of its own, fed by the same log
                scaled = ["--namespace", "scaled"]
                session.run([*scaled, "topics", "create", "--partitions", "2"])
                session.run([*scaled, *session.last_replay[1:]])
                joins = [subprocess.Popen([sys.executable, "-m", "streamrec", *scaled, "join", "--exit-at-end",
                                           "--metrics-port", "0"], cwd=tmp_path, env=session.env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
                session.background.update({f"join{i}": p for i, p in enumerate(joins)})
            elif args[1] == "train" and "--from-examples" in args:
                report = tmp_path / "scaled.json"
                session.run(["--namespace", "scaled", *args[1:], "--exit-at-end", "--metrics-port", "0",
                             "--report-json", str(report)])
                assert json.loads(report.read_text())["examples"] == ROWS
                for name in ("join0", "join1"):
                    assert session.background.pop(name).wait(60) == 0
            elif args[1] == "dashboard":
                token = args[args.index("--auth-token") + 1] if "--auth-token" in args else None
                if "--port" not in args:
                    args += ["--port", "0"]
                port = session.start("dashboard", args[1:], "port")
                assert _get(f"http://127.0.0.1:{port}/")[0] == (401 if token else 200)
                if token:
                    assert _get(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {token}"})[0] == 200
                session.stop("dashboard")
            else:
                pytest.fail(f"a README line this test does not know: {command}")
            covered.append(command)
    finally:
        session.close()
    assert len(covered) == len(everyday_commands()) >= 25
