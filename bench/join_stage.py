"""The join stage against the join inside the trainer, on the same replayed stream.

    python bench/join_stage.py --rows 200000 --model wide_deep --join-workers 1 2
    python bench/join_stage.py --join-workers 1 --encodings json columns   # both event encodings, interleaved

For each setting, the rows are replayed onto fresh topics of the embedded broker first; then

* ``in-trainer``: one trainer worker consumes impressions and clicks, joins and learns (today's
  default, bench/online_loop.py);
* ``join stage, N workers``: N `streamrec join` processes (one consumer group) write labelled
  examples to ``<ns>.examples`` while a trainer (``--from-examples``) learns from them.

Reported: labelled examples per second end to end (first record to last version), and the CPU
seconds per 1,000 examples of the trainer's worker process and of the join workers. The trainer
process's CPU is what limits how many models one machine trains; the join stage's CPU is what
spreads over more machines. On this machine all of it (broker, Redis, joins, trainer and its
learner) shares 2 cores, so the end-to-end rate says little about a cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SYNTHETIC_FIELDS, process_cpu_seconds, write_result  # noqa: E402
from streamrec.consumers.trainer import Trainer, TrainerOptions  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.producers.column_replay import replay_columns  # noqa: E402
from streamrec.producers.columns import read_columns  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402
from streamrec.producers.replay import ReplayOptions, replay  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_producer  # noqa: E402
from streamrec.stream.settings import load_settings  # noqa: E402


def _reap(process: subprocess.Popen, timeout_s: float = 120.0) -> float:
    """Wait for a child and return its CPU seconds (its own rusage, not every child's)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise SystemExit(f"join worker {process.pid} exited with {process.returncode}")
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    raise SystemExit(f"join worker {process.pid} did not finish in {timeout_s:.0f}s")


def run_once(data: Path, state, home: Path, model: str, join_workers: int, partitions: int,
             encoding: str = "columns") -> dict:
    settings = load_settings(namespace=f"bench-{uuid.uuid4().hex[:6]}", home=home, partitions=partitions,
                             kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
    topics = [settings.impressions_topic, settings.clicks_topic, settings.dead_letter_topic, settings.examples_topic]
    create_topics(state.kafka_bootstrap, topics, partitions)
    producer = make_producer(state.kafka_bootstrap)
    where = {"impressions_topic": settings.impressions_topic, "clicks_topic": settings.clicks_topic,
             "dead_letter_topic": settings.dead_letter_topic, "partitions": partitions}
    # the same impression ids in every setting: digests compare
    options = ReplayOptions(run_id="bench", encoding=encoding)
    try:
        if encoding == "columns":  # as `streamrec replay` sends a Criteo log
            replay_columns(read_columns(data, "criteo", ReaderOptions(**SYNTHETIC_FIELDS)), producer,
                           options=options, **where)
        else:
            replay(read_rows(data, "criteo", ReaderOptions(**SYNTHETIC_FIELDS)), producer, options=options, **where)
    finally:
        producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_KAFKA_BOOTSTRAP": state.kafka_bootstrap, "STREAMREC_REDIS_URL": state.redis_url,
                "STREAMREC_NAMESPACE": settings.namespace, "STREAMREC_HOME": str(home)})
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "streamrec", "join", "--exit-at-end", "--metrics-port", "0",
                                 "--worker-id", f"join-{i}"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for i in range(join_workers)]
    trainer = Trainer(settings, TrainerOptions.from_settings(settings, model=model, exit_at_end=True,
                                                             publish_every_examples=10**9, metrics_port=None,
                                                             from_examples=join_workers > 0),
                      kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
    cpu_before, broker_before = time.process_time(), process_cpu_seconds(state.broker_pid)
    try:
        report = trainer.run()
        trainer_cpu = time.process_time() - cpu_before
        join_cpu = sum(_reap(worker) for worker in workers)
    finally:
        trainer.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    examples = report["examples"]
    return {
        "setting": (f"join stage, {join_workers} worker(s)" if join_workers else "in-trainer") + f", {encoding}",
        "encoding": encoding,
        "join_workers": join_workers,
        "examples": examples,
        "examples_per_second": report["examples_per_second"],
        "auc": report["auc"],
        "wall_with_start_s": time.perf_counter() - started,
        "trainer_cpu_s_per_1k": 1000 * trainer_cpu / examples,
        "join_cpu_s_per_1k": 1000 * join_cpu / examples,
        "broker_cpu_s_per_1k": 1000 * (process_cpu_seconds(state.broker_pid) - broker_before) / examples,
        "digest": report["digest"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--join-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--encodings", nargs="+", default=["columns"], choices=["columns", "json"])
    parser.add_argument("--name", default="join_stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "stream.tsv"
        write_stream(generate(args.rows, seed=0), data, seed=0)
        state = start_stack(home)
        runs = []
        try:
            for join_workers, encoding in ((w, e) for w in [0, *args.join_workers] for e in args.encodings):
                result = run_once(data, state, home, args.model, join_workers, args.partitions, encoding)
                runs.append(result)
                print(f"{result['setting']:>34}: {result['examples_per_second']:8,.0f} labelled ex/s, "
                      f"AUC {result['auc']:.4f}; CPU-s per 1k examples: trainer process "
                      f"{result['trainer_cpu_s_per_1k']:.3f}, join workers {result['join_cpu_s_per_1k']:.3f}, "
                      f"broker {result['broker_cpu_s_per_1k']:.3f}")
        finally:
            stop_stack(home)
    digests = {r["digest"] for r in runs}
    print(f"same examples trained in every setting: {len(digests) == 1}")
    write_result(args.name, {"rows": args.rows, "model": args.model, "partitions": args.partitions,
                             "data": "synthetic (producers/generator.py, seed 0)", "runs": runs,
                             "same_examples_everywhere": len(digests) == 1})


if __name__ == "__main__":
    main()
