"""``streamrec demo``: the whole loop on one machine, with one command.

Start (or reuse) the local stack; generate a synthetic stream with a known oracle AUC (or take
``--data``); then run the replay producer, a trainer worker and a scorer (``streamrec serve``)
as separate processes, as they would run in production, and show a live view scraped from the
trainer's and the scorer's Prometheus endpoints. At the end the scorer answers a request with
the live version. The trainer stops at the replay's final watermarks, after flushing the joiner, so every
impression is trained exactly once. Everything started here is stopped by pid on the way out,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.local_stack import child_preexec, running_stack
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.readers import ReaderOptions
from streamrec.stream.errors import StackError
from streamrec.stream.http_auth import bearer_header
from streamrec.stream.kafka_client import create_topics
from streamrec.stream.prometheus import scrape
from streamrec.stream.settings import Settings

STOP_GRACE_S = 5.0


@dataclass
class Child:
    """A process the demo started, with its log; stopped by pid."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (the trainer publishes a last version on it), then SIGKILL after a grace period."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamrec", *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=child_preexec())
    return Child(name, process, log_path)


def _live_line(metrics: dict[str, float], served: dict[str, float]) -> str:
    def get(key: str) -> float:
        return metrics.get(key, float("nan"))

    lag = sum(v for k, v in metrics.items() if k.startswith("streamrec_consumer_lag_messages"))
    version, delta = served.get("streamrec_served_version", float("nan")), served.get("streamrec_served_delta_seq")
    scorer = "scorer waiting" if version != version else f"serving v{version:.0f} (delta {delta:.0f})"
    return (f"examples {get('streamrec_examples_trained_total'):>10,.0f}   "
            f"{get('streamrec_examples_per_second'):>7,.0f} ex/s   "
            f"AUC window {get('streamrec_auc_ratio{window=recent}'):.4f}  "
            f"lifetime {get('streamrec_auc_ratio{window=lifetime}'):.4f}   "
            f"version {get('streamrec_head_version'):.0f}   lag {lag:,.0f}   {scorer}")


def _get_json(url: str, body: Any = None, timeout_s: float = 5.0, token: str | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                              **bearer_header(token)})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return {"status_code": exc.code, **json.loads(exc.read() or b"{}")}


def _ask_scorer(port: int, live: int | None, data: Path, fmt: str, reader_options: ReaderOptions,
                say: Callable[[str], None], wait_s: float = 15.0, token: str | None = None) -> dict[str, Any]:
    """Wait until the scorer serves the live version, then score a few events with it."""
    from streamrec.producers.readers import read_rows

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _get_json(f"http://127.0.0.1:{port}/healthz").get("version") == live:
            break
        time.sleep(0.2)
    rows = []
    for row in read_rows(data, fmt, reader_options):
        rows.append({"user_id": row.user_id, "item_id": row.item_id, "features": row.features})
        if len(rows) == 3:
            break
    started = time.perf_counter()
    answer = _get_json(f"http://127.0.0.1:{port}/predict", {"events": rows}, token=token)
    millis = (time.perf_counter() - started) * 1e3
    if "predictions" in answer:
        say(f"scorer: version {answer['version']} (+{answer['deltas_applied']} deltas) scored 3 events in "
            f"{millis:.1f} ms: {', '.join(f'{p:.3f}' for p in answer['predictions'])}")
    else:
        say(f"scorer did not answer: {answer}")
    return {**{k: answer.get(k) for k in ("version", "deltas_applied", "predictions")}, "latency_ms": millis}


def run_demo(settings: Settings, *, events: int, model: str, data: Path | None, fmt: str,
             reader_options: ReaderOptions, say: Callable[[str], None],
             live: Callable[[str], None] | None = None, timeout_s: float = 600.0,
             dashboard_port: int | None = None,
             linger: Callable[[str, dict[str, Any]], None] | None = None, join_workers: int = 0) -> dict[str, Any]:
    """Run the loop; with ``dashboard_port``, also a live dashboard, and call ``linger(url, report)`` at
    the end, before anything stops, so the user can keep looking at it. With ``join_workers``, the join
    runs as a stage of that many `streamrec join` processes and the trainer reads their examples."""
    with ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="streamrec-demo-")))
        endpoints = cleanup.enter_context(running_stack(settings))
        say(f"stack: kafka {endpoints.kafka_bootstrap}, redis {endpoints.redis_url}")
        oracle = None
        if data is None:
            data, fmt = tmp / "synthetic.tsv", "criteo"
            summary = write_stream(generate(events, seed=0), data, seed=0)
            reader_options = ReaderOptions(user_field="C1", item_field="C2")
            oracle = summary["oracle_auc"]
            say(f"generated {events:,} rows (oracle AUC {oracle:.4f})")
        namespace = f"{settings.namespace}-demo-{uuid.uuid4().hex[:6]}"
        topics = [f"{namespace}.impressions", f"{namespace}.clicks", f"{namespace}.dead-letter",
                  f"{namespace}.examples"]
        create_topics(endpoints.kafka_bootstrap, topics, settings.partitions)
        env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
               "STREAMREC_REDIS_URL": endpoints.redis_url, "STREAMREC_NAMESPACE": namespace,
               "STREAMREC_HOME": str(settings.home), "STREAMREC_PARTITIONS": str(settings.partitions)}
        ready, train_report, replay_report = tmp / "ready.json", tmp / "train.json", tmp / "replay.json"
        serve_ready = tmp / "serve.json"
        scorer = _spawn("scorer", ["serve", "--model", model, "--port", "0", "--ready-file", str(serve_ready)], env, tmp)
        cleanup.callback(scorer.stop)
        dashboard_url = None
        if dashboard_port is not None:
            dashboard_ready = tmp / "dashboard.json"
            board = _spawn("dashboard", ["dashboard", "--port", str(dashboard_port), "--ready-file",
                                         str(dashboard_ready)], env, tmp)
            cleanup.callback(board.stop)
            port = _wait_for_port(board, dashboard_ready, "port")
            dashboard_url = f"http://127.0.0.1:{port}/"
            say(f"live dashboard: {dashboard_url}")
        joins = []
        for i in range(join_workers):
            join = _spawn(f"join-{i}", ["join", "--exit-at-end", "--metrics-port", "0", "--worker-id", f"demo-join-{i}",
                                        "--report-json", str(tmp / f"join-{i}.json")], env, tmp)
            cleanup.callback(join.stop)
            joins.append(join)
        source = ["--from-examples"] if join_workers else []
        trainer = _spawn("trainer", ["train", "--model", model, "--exit-at-end", "--metrics-port", "0", *source,
                                     "--worker-id", "demo-trainer", "--ready-file", str(ready),
                                     "--report-json", str(train_report)], env, tmp)
        cleanup.callback(trainer.stop)
        reader_args = [f"--user-field={reader_options.user_field}"] if reader_options.user_field else []
        reader_args += [f"--item-field={reader_options.item_field}"] if reader_options.item_field else []
        producer = _spawn("replay", ["replay", str(data), "--format", fmt, "--limit", str(events), *reader_args,
                                     "--report-json", str(replay_report)], env, tmp)
        cleanup.callback(producer.stop)
        stage = f"join pids {', '.join(str(j.process.pid) for j in joins)} → {namespace}.examples → " if joins else ""
        say(f"replay pid {producer.process.pid} → topics {namespace}.* → {stage}trainer pid {trainer.process.pid} "
            f"→ Redis → scorer pid {scorer.process.pid}")
        _watch(trainer, producer, ready, serve_ready, live, timeout_s, settings.auth_token or None)
        if producer.process.returncode != 0:
            raise StackError(f"the replay producer failed (exit {producer.process.returncode}):\n{producer.tail()}")
        if trainer.process.returncode != 0:
            raise StackError(f"the trainer failed (exit {trainer.process.returncode}):\n{trainer.tail()}")
        join_dead_letters = 0
        for i, join in enumerate(joins):
            if join.process.wait(60) != 0:
                raise StackError(f"join worker {i} failed (exit {join.process.returncode}):\n{join.tail()}")
            join_dead_letters += json.loads((tmp / f"join-{i}.json").read_text())["dead_letters"]
        produced = json.loads(replay_report.read_text())
        report = json.loads(train_report.read_text())
        say(f"replayed {produced['impressions']:,} impressions + {produced['clicks']:,} clicks "
            f"at {produced['events_per_second']:,.0f} events/s")
        served: dict[str, Any] = {}
        if scorer.process.poll() is None and serve_ready.exists():
            from streamrec.stream.redis_connection import connect
            from streamrec.versions.store import VersionStore

            client = connect(endpoints.redis_url)
            live_version = VersionStore(client, namespace, model).live()
            client.close()
            served = _ask_scorer(int(json.loads(serve_ready.read_text())["port"]), live_version, data, fmt,
                                 reader_options, say, token=settings.auth_token or None)
        else:
            say(f"the scorer stopped early:\n{scorer.tail()}")
        report = {**report, "events_produced": produced["impressions"] + produced["clicks"],
                  "dead_letters": produced["dead_letters"] + report["dead_letters"] + join_dead_letters,
                  "join_workers": join_workers,
                  "oracle_auc": oracle, "namespace": namespace, "served": served, "dashboard": dashboard_url}
        if dashboard_url is not None and linger is not None:
            linger(dashboard_url, report)
        return report
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions


def _port(ready: Path, key: str) -> int | None:
    if not ready.exists():
        return None
    try:
        return int(json.loads(ready.read_text())[key])
    except (ValueError, KeyError):
        return None  # written but not complete yet


def _wait_for_port(child: Child, ready: Path, key: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (port := _port(ready, key)) is None:
        if child.process.poll() is not None:
            raise StackError(f"the {child.name} stopped (exit {child.process.returncode}):\n{child.tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"the {child.name} did not start within {timeout_s:.0f}s:\n{child.tail()}")
        time.sleep(0.1)
    return port


def _watch(trainer: Child, producer: Child, ready: Path, serve_ready: Path, live: Callable[[str], None] | None,
           timeout_s: float, token: str | None = None) -> None:
    """Wait for the trainer and the producer; feed ``live`` a status line twice a second."""
    deadline = time.monotonic() + timeout_s
    port = serve_port = None
    while True:
        port = port or _port(ready, "metrics_port")
        serve_port = serve_port or _port(serve_ready, "port")
        if live is not None and port is not None and trainer.process.poll() is None:
            try:
                served = scrape(serve_port, token=token) if serve_port is not None else {}
            except OSError:
                served = {}
            try:
                live(_live_line(scrape(port, token=token), served))
            except OSError:
                pass
        if trainer.process.poll() is not None:
            if producer.process.poll() is None:
                producer.stop()
            return
        if producer.process.poll() not in (None, 0):
            return  # the trainer would wait for a final watermark that will not come
        if time.monotonic() > deadline:
            raise StackError(f"the demo did not finish within {timeout_s:.0f}s;\ntrainer log:\n{trainer.tail()}")
        time.sleep(0.5)
