"""End-to-end training rate through the broker, beside `evaluate`'s file-only rate on the same rows.

    python bench/online_loop.py --rows 200000 --model wide_deep
    python bench/online_loop.py --data day.tsv --rows 200000 --encodings json,columns --gates on --repeats 2

Each process's CPU seconds per 1,000 examples (replay per 1,000 events) are reported beside the
rates: they do not depend on what else this shared machine is doing. ``--encodings`` replays the
same rows as columnar batches and as JSON arrays, interleaved (docs/events.md).

1. generate a synthetic stream; 2. one prequential pass over the file (`evaluate`, no Kafka);
3. replay the same rows onto the embedded broker (before the trainer starts, so the trainer is never
waiting for the producer); 4. a trainer worker consumes, joins, learns and publishes versions to
Redis until the final watermarks. Its rate counts from its first record (after the group join) to
its last version. Broker, Redis and trainer share this machine's cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import process_cpu_seconds, write_agrawal_criteo, write_result  # noqa: E402
from streamrec.consumers.trainer import Trainer, TrainerOptions  # noqa: E402
from streamrec.evaluation import evaluate_file  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.models.online_search import SearchSettings  # noqa: E402
from streamrec.producers.column_replay import replay_columns  # noqa: E402
from streamrec.producers.columns import columnar_fields, read_columns  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402
from streamrec.producers.replay import ReplayOptions, replay  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_producer  # noqa: E402
from streamrec.stream.settings import load_settings  # noqa: E402
from streamrec.versions.quality_gate import GateOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--publish-every-s", type=float, default=5.0)
    parser.add_argument("--positives", choices=["click", "window"], default="window",
                        help="When the joiner releases positives (consumers/joiner.py).")
    parser.add_argument("--delta-every-s", type=float, default=0.5, help="Delta cadence; 0 = full versions only.")
    parser.add_argument("--gates", default="on",
                        help="Comma-separated gate settings to run side by side, interleaved: on, off "
                             "(on: the learner also scores every batch with a frozen copy of the live version).")
    parser.add_argument("--encodings", default="columns",
                        help="Comma-separated replay encodings to run side by side, interleaved: columns, json.")
    parser.add_argument("--data", type=Path, help="A log to use instead of the generator's stream.")
    parser.add_argument("--format", default="criteo", help="--data's format (producers/readers.py FORMATS).")
    parser.add_argument("--agrawal", action="store_true",
                        help="River's Agrawal generator written as a Criteo log, instead of the project's stream.")
    parser.add_argument("--user-field", default="C1")
    parser.add_argument("--item-field", default="C2")
    parser.add_argument("--search", choices=["on", "off"], default="on",
                        help="The online search (on by default in evaluate and train), in both passes.")
    parser.add_argument("--watermark-min-rows", type=int, default=None,
                        help="The replay's watermark_min_rows (default: the replay's own, producers/replay.py).")
    parser.add_argument("--name", default="online_loop")
    parser.add_argument("--repeats", type=int, default=3, help="Online runs (fresh topics each); the median is reported.")
    args = parser.parse_args()
    options = ReaderOptions(user_field=args.user_field, item_field=args.item_field)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        data = Path(tmp) / "stream.tsv"
        if args.data is not None:
            with args.data.open("rb") as source, data.open("wb") as sink:
                for _ in range(args.rows):
                    line = source.readline()
                    if not line:
                        break
                    sink.write(line)
            summary = {"oracle_auc": float("nan")}
            print(f"the first {args.rows:,} rows of {args.data}")
        elif args.agrawal:
            summary = {"oracle_auc": float("nan"), **write_agrawal_criteo(data, args.rows, seed=0)}
            print(f"wrote {args.rows:,} rows of {summary['source']} as a Criteo log")
        else:
            summary = write_stream(generate(args.rows, seed=0), data, seed=0)
            print(f"generated {args.rows:,} rows, oracle AUC {summary['oracle_auc']:.4f}")
        file_report, _ = evaluate_file(data, args.format, args.model, reader_options=options,
                                       batch_size=args.batch_size,
                                       search=SearchSettings() if args.search == "on" else None)
        print(f"evaluate (file only): {file_report['examples_per_second']:,.0f} ex/s, AUC {file_report['auc']:.4f}")
        state = start_stack(home)
        runs = []
        gates = [g.strip() for g in args.gates.split(",") if g.strip()]
        encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
        try:
            for repeat, gate, encoding in ((r, g, e) for r in range(args.repeats) for g in gates for e in encodings):
                settings = load_settings(namespace=f"bench-{uuid.uuid4().hex[:6]}", home=home,
                                         kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
                create_topics(state.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                                      settings.dead_letter_topic], settings.partitions)
                producer = make_producer(state.kafka_bootstrap)
                replay_cpu = time.process_time()
                topics = {"impressions_topic": settings.impressions_topic, "clicks_topic": settings.clicks_topic,
                          "dead_letter_topic": settings.dead_letter_topic, "partitions": settings.partitions}
                try:
                    replay_options = ReplayOptions(encoding=encoding, watermark_min_rows=args.watermark_min_rows)
                    if encoding == "columns" and columnar_fields(args.format, options):
                        # what `streamrec replay` does: the same events from column chunks
                        produced = replay_columns(read_columns(data, args.format, options), producer,
                                                  options=replay_options, **topics)
                    else:
                        produced = replay(read_rows(data, args.format, options), producer,
                                          options=replay_options, **topics)
                finally:
                    producer.close()
                replay_cpu = time.process_time() - replay_cpu
                trainer = Trainer(settings, TrainerOptions.from_settings(
                    settings, model=args.model, batch_size=args.batch_size, exit_at_end=True,
                    publish_every_s=args.publish_every_s, publish_every_examples=10**9, positives=args.positives,
                    delta_every_s=args.delta_every_s, metrics_port=None, gate=GateOptions(enabled=gate == "on"),
                    search=args.search == "on"),
                                  kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
                started = time.perf_counter()
                cpu_before, broker_before = time.process_time(), process_cpu_seconds(state.broker_pid)
                try:
                    online = trainer.run()
                    # A version stores only the table rows the stream touched (models/base.py).
                    version_bytes = len(trainer.store.load(trainer.head, with_state=False).weights)
                    learner_cpu = process_cpu_seconds(trainer.learner.pid) if trainer.learner.pid else float("nan")
                finally:
                    trainer.close()
                total_wall = time.perf_counter() - started
                trainer_cpu = time.process_time() - cpu_before
                broker_cpu = process_cpu_seconds(state.broker_pid) - broker_before
                examples = max(online["examples"], 1)
                print(f"run {repeat + 1} (gate {gate}, {encoding}): replayed {produced.impressions + produced.clicks:,} events at "
                      f"{produced.events_per_second:,.0f}/s; trainer {online['examples_per_second']:,.0f} labelled "
                      f"ex/s, AUC {online['auc']:.4f}, {online['versions_published']} versions "
                      f"({total_wall:.1f}s with the group join; worker process {trainer_cpu:.1f} CPU-s, "
                      f"broker {broker_cpu:.1f} CPU-s); a version's weights: {version_bytes / 1e6:.1f} MB; per 1k "
                      f"examples: worker {1000 * trainer_cpu / examples:.3f} CPU-s, learner "
                      f"{1000 * learner_cpu / examples:.3f}, replay {1000 * replay_cpu / (produced.impressions + produced.clicks):.3f} per 1k events")
                runs.append({**{k: online[k] for k in ("examples_per_second", "learn_examples_per_second", "auc",
                                                       "auc_window", "versions_published", "deltas_published",
                                                       "wall_seconds",
                                                       "examples", "dead_letters")},
                             "gate": gate, "encoding": encoding, "replay_cpu_s": replay_cpu,
                             "replay_events": produced.impressions + produced.clicks,
                             "wall_with_group_join_s": total_wall, "worker_cpu_s": trainer_cpu,
                             "learner_cpu_s": learner_cpu,
                             "broker_cpu_s": broker_cpu, "replay_events_per_second": produced.events_per_second,
                             "version_weights_bytes": version_bytes})
        finally:
            stop_stack(home)
    summaries = {}
    for gate, encoding in ((g, e) for g in gates for e in encodings):
        of_setting = [r for r in runs if r["gate"] == gate and r["encoding"] == encoding]

        def median_of(key: str, per: str = "examples", runs: list = of_setting) -> float:
            values = sorted(1000 * r[key] / max(r[per], 1) for r in runs)
            return values[len(values) // 2]

        learn = sorted(r["learn_examples_per_second"] for r in of_setting)
        rates = sorted(r["examples_per_second"] for r in of_setting)
        summary_of = summaries[f"gate {gate}, {encoding}"] = {
            "worker_cpu_s_per_1k": median_of("worker_cpu_s"), "learner_cpu_s_per_1k": median_of("learner_cpu_s"),
            "broker_cpu_s_per_1k": median_of("broker_cpu_s"),
            "replay_cpu_s_per_1k_events": median_of("replay_cpu_s", "replay_events"),
            "examples_per_second": rates[len(rates) // 2],
            "online_over_file": rates[len(rates) // 2] / file_report["examples_per_second"],
        }
        print(f"gate {gate}, {encoding}: learner median {learn[len(learn) // 2]:,.0f} ex/s; per 1k examples: "
              f"worker {summary_of['worker_cpu_s_per_1k']:.4f} CPU-s, learner {summary_of['learner_cpu_s_per_1k']:.4f}, "
              f"broker {summary_of['broker_cpu_s_per_1k']:.4f}; replay {summary_of['replay_cpu_s_per_1k_events']:.4f} "
              f"CPU-s per 1k events; online {summary_of['examples_per_second']:,.0f} ex/s = "
              f"{summary_of['online_over_file']:.2f}x the file-only rate {file_report['examples_per_second']:,.0f} ex/s")
    rates = sorted(r["examples_per_second"] for r in runs)
    median = rates[len(rates) // 2]
    ratio = median / file_report["examples_per_second"]
    write_result(args.name, {
        "rows": args.rows, "model": args.model, "search": args.search, "batch_size": args.batch_size, "oracle_auc": summary["oracle_auc"],
        "positives": args.positives, "delta_every_s": args.delta_every_s,
        "watermark_min_rows": args.watermark_min_rows,
        "data": str(args.data) if args.data else summary["source"] if args.agrawal
        else "synthetic (producers/generator.py, seed 0)",
        "settings": summaries,
        "file_only": {k: file_report[k] for k in ("examples_per_second", "auc", "wall_seconds")},
        "online_runs": runs,
        "online_median_examples_per_second": median,
        "online_over_file": ratio,
    })


if __name__ == "__main__":
    main()
