"""Helpers for tests that replay rows through a real broker and run trainers against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamrec.consumers.trainer import Trainer, TrainerOptions
from streamrec.consumers.worker_counters import example_digest
from streamrec.local_stack import Endpoints
from streamrec.producers.readers import Row
from streamrec.producers.replay import ReplayOptions, ReplayReport, replay
from streamrec.stream.kafka_client import create_topics, make_producer
from streamrec.stream.prometheus import scrape
from streamrec.stream.settings import Settings, load_settings

PARTITIONS = 2


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str = "the condition", every_s: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def head_examples(store: Any) -> int:
    """Examples in a model's newest version (0 before the first)."""
    head = store.head()
    return store.meta(head).examples_seen if head else 0


def run_into_the_stream(process: subprocess.Popen, store: Any, total: int, rng: Any,
                        shares: tuple[float, float], pause_s: float) -> None:
    """Let ``process`` train until its newest version holds a random share (in ``shares``) more of
    the ``total`` examples left, then a random moment more (up to ``pause_s``): a kill then lands
    while training, while publishing, or between a publish and its offset commit."""
    start = head_examples(store)
    threshold = start + rng.uniform(*shares) * (total - start)
    deadline = time.monotonic() + 120
    while process.poll() is None and head_examples(store) < threshold and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, pause_s))


def settings_for(namespace: str, **overrides: Any) -> Settings:
    return load_settings(namespace=namespace, partitions=PARTITIONS, **overrides)


def replay_rows(stack: Endpoints, settings: Settings, rows: Sequence[Row], run_id: str,
                final: bool = True, rate: float | None = None) -> ReplayReport:
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic], settings.partitions)
    producer = make_producer(stack.kafka_bootstrap, settings.kafka_client)
    try:
        return replay(rows, producer, impressions_topic=settings.impressions_topic, clicks_topic=settings.clicks_topic,
                      dead_letter_topic=settings.dead_letter_topic, partitions=settings.partitions,
                      options=ReplayOptions(run_id=run_id, final_watermarks=final, rate=rate))
    finally:
        producer.close()


def expected_digest(run_id: str, rows: Sequence[Row]) -> str:
    """The trainer's digest for every row trained once with its label (all clicks in the window)."""
    value = example_digest([f"{run_id}-{i}" for i in range(len(rows))], [r.label for r in rows])
    return f"{value:016x}"


def combine(*digests: str) -> str:
    return f"{sum(int(d, 16) for d in digests) & ((1 << 64) - 1):016x}"


@dataclass
class Running:
    trainer: Trainer
    thread: threading.Thread
    result: dict[str, Any] = field(default_factory=dict)

    def wait(self, timeout_s: float = 120.0) -> dict[str, Any]:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.trainer.stop_event.set()
            self.thread.join(30)
            raise AssertionError(f"trainer did not finish within {timeout_s}s")
        if "error" in self.result:
            raise self.result["error"]
        return self.result["report"]

    def finish(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The report at the end of the stream and the worker's scraped /metrics; stopped either way."""
        try:
            report = self.wait()
            return report, scrape(self.trainer.metrics.port)
        finally:
            self.stop()

    def stop(self) -> None:
        self.trainer.stop_event.set()
        self.thread.join(60)
        self.trainer.close()


def start_trainer(stack: Endpoints, settings: Settings, redis_url: str | None = None,
                  on_publish: Any = None, probe: Any = None, on_delta: Any = None, **options: Any) -> Running:
    opts = TrainerOptions.from_settings(settings, **{"model": "lr", "exit_at_end": True, "batch_size": 256,
                                                     "metrics_port": None, **options})
    trainer = Trainer(settings, opts, kafka_bootstrap=stack.kafka_bootstrap, redis_url=redis_url or stack.redis_url,
                      on_publish=on_publish, probe=probe, on_delta=on_delta)
    running = Running(trainer, threading.Thread(target=lambda: None))

    def body() -> None:
        try:
            running.result["report"] = trainer.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            running.result["error"] = exc

    running.thread = threading.Thread(target=body, daemon=True)
    running.thread.start()
    return running


def cli_env(stack: Endpoints, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_REDIS_URL": stack.redis_url, "STREAMREC_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
                "STREAMREC_NAMESPACE": namespace, **extra})
    return env


@contextmanager
def cli_server(env: dict[str, str], tmp_path: Path, *args: str, timeout_s: float = 60.0) -> Iterator[str]:
    """A `streamrec` server command (serve, dashboard) started with ``--port 0 --ready-file``;
    yields its base URL; stopped by pid, also on failure."""
    name = f"{args[0]}-{time.monotonic_ns()}"
    ready, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "streamrec", *args, "--port", "0", "--ready-file", str(ready)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if process.poll() is not None:
                raise AssertionError(f"{args[0]} exited: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{args[0]} did not start in {timeout_s:.0f} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def browser_page(height: int) -> Iterator[tuple[Any, list[str]]]:
    """A page of Debian's chromium, headless through playwright (1400 px wide), and the console
    errors, warnings and page errors it reports; the browser is closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            browser.close()


@contextmanager
def learner_threads() -> Iterator[None]:
    """Torch threads as in the learner process, for predictions compared bit for bit with the
    trainer's own (consumers/learner.py, LEARNER_THREADS)."""
    from streamrec.consumers.learner import LEARNER_THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(LEARNER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
