"""``streamrec demo``: the whole loop on one machine, with one command.

Start (or reuse) the local stack; generate a synthetic stream with a known oracle AUC (or take
``--data``); then run the replay producer and a trainer worker as two separate processes, as
they would run in production, and show a live view scraped from the trainer's Prometheus
endpoint. The trainer stops at the replay's final watermarks, after flushing the joiner, so every
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
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from producers.generator import generate, write_stream
from producers.readers import ReaderOptions
from stream.errors import StackError
from stream.kafka_client import create_topics
from stream.local_stack import running_stack
from stream.settings import Settings

STOP_GRACE_S = 5.0


@dataclass
class Child:
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
        process = subprocess.Popen([sys.executable, "-m", "stream", *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Child(name, process, log_path)


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, float]:
    """A worker's /metrics as ``{"name{label=value,...}": value}`` (model and worker labels dropped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k not in ("model", "worker"))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _live_line(metrics: dict[str, float]) -> str:
    def get(key: str) -> float:
        return metrics.get(key, float("nan"))

    lag = sum(v for k, v in metrics.items() if k.startswith("streamrec_consumer_lag_messages"))
    return (f"examples {get('streamrec_examples_trained_total'):>10,.0f}   "
            f"{get('streamrec_examples_per_second'):>7,.0f} ex/s   "
            f"AUC window {get('streamrec_auc_ratio{window=recent}'):.4f}  "
            f"lifetime {get('streamrec_auc_ratio{window=lifetime}'):.4f}   "
            f"version {get('streamrec_model_version'):.0f}   lag {lag:,.0f}")


def run_demo(settings: Settings, *, events: int, model: str, data: Path | None, fmt: str,
             reader_options: ReaderOptions, say: Callable[[str], None],
             live: Callable[[str], None] | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
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
        topics = [f"{namespace}.impressions", f"{namespace}.clicks", f"{namespace}.dead-letter"]
        create_topics(endpoints.kafka_bootstrap, topics, settings.partitions)
        env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
               "STREAMREC_REDIS_URL": endpoints.redis_url, "STREAMREC_NAMESPACE": namespace,
               "STREAMREC_HOME": str(settings.home), "STREAMREC_PARTITIONS": str(settings.partitions)}
        ready, train_report, replay_report = tmp / "ready.json", tmp / "train.json", tmp / "replay.json"
        trainer = _spawn("trainer", ["train", "--model", model, "--exit-at-end", "--metrics-port", "0",
                                     "--worker-id", "demo-trainer", "--ready-file", str(ready),
                                     "--report-json", str(train_report)], env, tmp)
        cleanup.callback(trainer.stop)
        reader_args = [f"--user-field={reader_options.user_field}"] if reader_options.user_field else []
        reader_args += [f"--item-field={reader_options.item_field}"] if reader_options.item_field else []
        producer = _spawn("replay", ["replay", str(data), "--format", fmt, "--limit", str(events), *reader_args,
                                     "--report-json", str(replay_report)], env, tmp)
        cleanup.callback(producer.stop)
        say(f"replay pid {producer.process.pid} → topics {namespace}.* → trainer pid {trainer.process.pid}")
        _watch(trainer, producer, ready, live, timeout_s)
        if producer.process.returncode != 0:
            raise StackError(f"the replay producer failed (exit {producer.process.returncode}):\n{producer.tail()}")
        if trainer.process.returncode != 0:
            raise StackError(f"the trainer failed (exit {trainer.process.returncode}):\n{trainer.tail()}")
        produced = json.loads(replay_report.read_text())
        report = json.loads(train_report.read_text())
        say(f"replayed {produced['impressions']:,} impressions + {produced['clicks']:,} clicks "
            f"at {produced['events_per_second']:,.0f} events/s")
        return {**report, "events_produced": produced["impressions"] + produced["clicks"],
                "dead_letters": produced["dead_letters"] + report["dead_letters"],
                "oracle_auc": oracle, "namespace": namespace}
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions


def _watch(trainer: Child, producer: Child, ready: Path, live: Callable[[str], None] | None,
           timeout_s: float) -> None:
    """Wait for both children; feed ``live`` a status line twice a second."""
    deadline = time.monotonic() + timeout_s
    port: int | None = None
    while True:
        if port is None and ready.exists():
            try:
                port = int(json.loads(ready.read_text())["metrics_port"])
            except (ValueError, KeyError):
                port = None  # written but not complete yet
        if live is not None and port is not None and trainer.process.poll() is None:
            try:
                live(_live_line(scrape(port)))
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
