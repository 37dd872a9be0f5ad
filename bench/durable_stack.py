"""What durability costs: the same replay and training on the durable and the memory stack, side by side.

    python bench/durable_stack.py --rows 100000 --model lr --rounds 2

Each round starts a durable stack (Tansu on SeaweedFS S3 storage, Redis with an append-only file) and
a memory stack, alternating which goes first, and on each: creates the topics, replays the same rows
(this process is the producer), trains one model to the end of the stream, restarts the stack and
trains again (on the durable stack the second run resumes with nothing left to learn; on the memory
stack the topics and versions are gone). Reported per storage: stack start-up seconds, replay events/s
and CPU seconds per 1,000 events of the producer, the broker and the S3 server; the trainer's CPU
seconds per 1,000 examples; and the bytes the durable stack kept on disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SYNTHETIC_FIELDS, process_cpu_seconds, write_result  # noqa: E402
from streamrec.consumers.trainer import Trainer, TrainerOptions  # noqa: E402
from streamrec.local_stack import StackState, start_stack, stop_stack  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402
from streamrec.producers.replay import replay  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_producer  # noqa: E402
from streamrec.stream.settings import Settings, load_settings  # noqa: E402


def _server_cpu(state: StackState) -> dict[str, float]:
    return {name: process_cpu_seconds(pid) for name, pid, _binary in state.processes()}


def _train(settings: Settings, state: StackState, model: str) -> tuple[dict, float]:
    trainer = Trainer(settings, TrainerOptions.from_settings(settings, model=model, exit_at_end=True,
                                                             metrics_port=None),
                      kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
    cpu = time.process_time()
    try:
        report = trainer.run()
    finally:
        trainer.close()
    return report, time.process_time() - cpu


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())  # allocated, not apparent


def run_once(storage: str, data: Path, model: str, root: Path) -> dict:
    home = root / f"{storage}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    state = start_stack(home, storage=storage)
    startup_s = time.perf_counter() - started
    settings = load_settings(namespace="bench", home=home, kafka_bootstrap=state.kafka_bootstrap,
                             redis_url=state.redis_url)
    try:
        create_topics(state.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                              settings.dead_letter_topic], settings.partitions)
        servers_before, producer_cpu = _server_cpu(state), time.process_time()
        producer = make_producer(state.kafka_bootstrap)
        try:
            produced = replay(read_rows(data, "criteo", ReaderOptions(**SYNTHETIC_FIELDS)), producer,
                              impressions_topic=settings.impressions_topic, clicks_topic=settings.clicks_topic,
                              dead_letter_topic=settings.dead_letter_topic, partitions=settings.partitions)
        finally:
            producer.close()
        producer_cpu = time.process_time() - producer_cpu
        events = produced.impressions + produced.clicks
        replay_servers = {k: v - servers_before[k] for k, v in _server_cpu(state).items()}
        servers_before = _server_cpu(state)
        report, trainer_cpu = _train(settings, state, model)
        train_servers = {k: v - servers_before[k] for k, v in _server_cpu(state).items()}
        stop_stack(home)
        restarted = time.perf_counter()
        state = start_stack(home, storage=storage)
        restart_s = time.perf_counter() - restarted
        create_topics(state.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                              settings.dead_letter_topic], settings.partitions)
        settings = load_settings(namespace="bench", home=home, kafka_bootstrap=state.kafka_bootstrap,
                                 redis_url=state.redis_url)
        resumed, _ = _train(settings, state, model) if storage == "durable" else ({}, 0.0)
    finally:
        stop_stack(home)
    examples = report["examples"]
    return {
        "storage": storage, "startup_s": startup_s, "restart_s": restart_s,
        "replay_events": events, "replay_events_per_second": produced.events_per_second,
        "replay_cpu_s_per_1k_events": {"producer": 1000 * producer_cpu / events,
                                       **{k: 1000 * v / events for k, v in replay_servers.items()}},
        "train_examples": examples, "train_examples_per_second": report["examples_per_second"],
        "train_cpu_s_per_1k_examples": {"trainer": 1000 * trainer_cpu / examples,
                                        **{k: 1000 * v / examples for k, v in train_servers.items()}},
        "auc": report["auc"], "digest": report["digest"],
        "after_restart": {k: resumed[k] for k in ("examples", "examples_this_run", "digest")} if resumed else None,
        "kept_bytes": _folder_bytes(home / "data") if (home / "data").exists() else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="lr")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="durable_stack")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "stream.tsv"
        write_stream(generate(args.rows, seed=0), data, seed=0)
        runs = []
        for round_ in range(args.rounds):
            order = ("durable", "memory") if round_ % 2 == 0 else ("memory", "durable")
            for storage in order:
                run = run_once(storage, data, args.model, root)
                runs.append(run)
                cpu = run["replay_cpu_s_per_1k_events"]
                print(f"round {round_ + 1} {storage:>7}: start {run['startup_s']:.1f}s, replay "
                      f"{run['replay_events_per_second']:,.0f} events/s (CPU-s per 1k events: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
                      + f"), train {run['train_examples_per_second']:,.0f} ex/s (trainer "
                      f"{run['train_cpu_s_per_1k_examples']['trainer']:.3f} CPU-s per 1k), restart "
                      f"{run['restart_s']:.1f}s, after restart {run['after_restart']}, kept "
                      f"{run['kept_bytes'] / 1e6:.1f} MB")
    ratios = {}
    for key in ("replay_events_per_second", "train_examples_per_second"):
        by = {s: sorted(r[key] for r in runs if r["storage"] == s) for s in ("durable", "memory")}
        ratios[f"{key}_durable_over_memory"] = by["durable"][len(by["durable"]) // 2] / by["memory"][len(by["memory"]) // 2]
    print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    write_result(args.name, {"rows": args.rows, "model": args.model, "rounds": args.rounds,
                             "data": "synthetic (producers/generator.py, seed 0)", "runs": runs, **ratios})


if __name__ == "__main__":
    main()
