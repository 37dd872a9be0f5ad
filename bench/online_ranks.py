"""One model trained online by 1 and by 2 ranks (``streamrec train --ranks``) from the same examples topic.

    python bench/online_ranks.py --rows 1000000 --batch-size 1024
    python bench/online_ranks.py --rows 200000 --ranks 1 2 --tables hashed
    python bench/online_ranks.py --rows 200000 --agrawal        # River's Agrawal written as a Criteo log
    python bench/online_ranks.py --rows 200000 --seed 7         # the generator with another seed
    python bench/online_ranks.py --frappe frappe.libfm          # Frappe (libfm; user f0, item f1)
    python bench/online_ranks.py --publish-every-s 5 --delta-every-s 0.5   # versions and deltas meanwhile
    python bench/online_ranks.py --frappe frappe.libfm --count user_id:item_id --count item_id \
        --count user_id --cross user_id:item_id                             # count features on ranks

The rows are replayed onto the embedded broker once and labelled once by a join worker into
``<ns>.examples``; then, for each rank count, ``streamrec train --from-examples --ranks R
--exit-at-end`` learns the same examples with the same global batch (each rank a share of it),
as a fresh model. Beside them, the one-process trainer (no ranks) learns the same examples as a
reference: it steps FTRL one example at a time (``ftrl.per_example``), which ranks cannot.

Reported per setting: labelled examples per second (first record to last version), AUC and
logloss over every example, the CPU seconds of the whole command (launcher, ranks, learners)
per 1,000 examples, and the bytes the ranks' learners put into collectives per example. All of
it shares this machine's 2 cores with the broker and Redis, so the rate of 2 ranks here is not
what 2 machines give: docs/distributed.md projects that from the bytes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SYNTHETIC_FIELDS, write_agrawal_criteo, write_result  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.producers.column_replay import replay_columns  # noqa: E402
from streamrec.producers.columns import read_columns  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, read_rows  # noqa: E402
from streamrec.producers.replay import ReplayOptions, replay  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_producer  # noqa: E402
from streamrec.stream.settings import load_settings  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant
    return usage.ru_utime + usage.ru_stime


def _forget_model(redis_url: str, namespace: str, model: str) -> None:
    """Drop the model's versions, so the next setting learns a fresh model from the same topic."""
    import redis

    from streamrec.versions.store import VersionStore

    client = redis.Redis.from_url(redis_url)
    prefix = VersionStore(client, namespace, model).keys.prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch: each of R ranks learns 1/R")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--tables", choices=["keyed", "hashed"], default="keyed")
    parser.add_argument("--no-reference", action="store_true", help="skip the one-process trainer")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed")
    parser.add_argument("--agrawal", action="store_true", help="River's Agrawal as a Criteo log instead")
    parser.add_argument("--frappe", type=Path, help="Frappe as libfm (hexiangnan/neural_factorization_machine, "
                                                    "data/frappe) instead, replayed row by row")
    parser.add_argument("--publish-every-s", type=float, default=3600.0,
                        help="versions while learning (default: only the last one)")
    parser.add_argument("--delta-every-s", type=float, default=0.0, help="deltas while learning (default: none)")
    parser.add_argument("--count", action="append", default=[], help="a count feature, as train --count")
    parser.add_argument("--cross", action="append", default=[], help="a wide cross, as train --cross")
    parser.add_argument("--name", default="online_ranks")
    args = parser.parse_args()
    source = (f"Frappe ({args.frappe.name}, hexiangnan/neural_factorization_machine)" if args.frappe
              else f"River's Agrawal (function 2, 5% perturbation, seed {args.seed}) as a Criteo log" if args.agrawal
              else f"synthetic (producers/generator.py, seed {args.seed})")
    with tempfile.TemporaryDirectory() as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "stream.tsv"
        if args.frappe:
            pass
        elif args.agrawal:
            write_agrawal_criteo(data, args.rows, seed=args.seed)
        else:
            write_stream(generate(args.rows, seed=args.seed), data, seed=args.seed)
        state = start_stack(home)
        runs = []
        try:
            namespace = f"ranks-{uuid.uuid4().hex[:6]}"
            settings = load_settings(namespace=namespace, home=home, partitions=args.partitions,
                                     kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
            create_topics(state.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                                  settings.dead_letter_topic, settings.examples_topic],
                          args.partitions)
            producer = make_producer(state.kafka_bootstrap)
            where = {"impressions_topic": settings.impressions_topic, "clicks_topic": settings.clicks_topic,
                     "dead_letter_topic": settings.dead_letter_topic, "partitions": args.partitions}
            try:
                if args.frappe:
                    rows = itertools.islice(read_rows(args.frappe, "libfm", ReaderOptions(user_field="f0",
                                                                                          item_field="f1")), args.rows)
                    replay(rows, producer, options=ReplayOptions(run_id="bench"), **where)
                else:
                    replay_columns(read_columns(data, "criteo", ReaderOptions(**SYNTHETIC_FIELDS)), producer,
                                   options=ReplayOptions(run_id="bench"), **where)
            finally:
                producer.close()
            env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
            env.update({"STREAMREC_KAFKA_BOOTSTRAP": state.kafka_bootstrap, "STREAMREC_REDIS_URL": state.redis_url,
                        "STREAMREC_NAMESPACE": namespace, "STREAMREC_HOME": str(home),
                        "STREAMREC_PARTITIONS": str(args.partitions)})
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "streamrec", "join", "--exit-at-end", "--metrics-port", "0"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            print(f"joined {source} into {settings.examples_topic} in {time.perf_counter() - started:.0f}s")
            # the one-process trainer first: it starts from its consumer group's committed offsets
            # when no version exists, and rank 0 commits every partition's after each version
            settings_list = [*([] if args.no_reference else [("one", 1)]), *(("ranks", r) for r in args.ranks)]
            for kind, ranks in settings_list:
                _forget_model(state.redis_url, namespace, args.model)
                report = Path(tmp) / f"report-{kind}-{ranks}.json"
                command = [sys.executable, "-m", "streamrec", "train", "--from-examples", "--model", args.model,
                           "--exit-at-end", "--no-search", "--no-gate", "--delta-every-s", str(args.delta_every_s),
                           "--batch-size", str(args.batch_size), "--tables", args.tables,
                           "--publish-every-examples", str(10**9), "--publish-every-s", str(args.publish_every_s),
                           "--metrics-port", "0", "--report-json", str(report),
                           *(f"--count={c}" for c in args.count), *(f"--cross={c}" for c in args.cross)]
                if kind == "ranks":
                    command += ["--ranks", str(ranks)]
                cpu = _children_cpu()
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                cpu = _children_cpu() - cpu
                result = json.loads(report.read_text())
                examples = result["examples"]
                run = {"setting": f"{ranks} rank(s)" if kind == "ranks" else "one process (per-example FTRL)",
                       "ranks": ranks if kind == "ranks" else None, "examples": examples,
                       "examples_per_second": result["examples_per_second"], "auc": result["auc"],
                       "logloss": result["logloss"], "cpu_s_per_1k": 1000 * cpu / examples,
                       "bytes_sent_per_example": result.get("bytes_sent_per_example"),
                       "wall_seconds": result["wall_seconds"], "digest": result["digest"],
                       "versions": result.get("versions_published"), "deltas": result.get("deltas_published")}
                runs.append(run)
                sent = run["bytes_sent_per_example"]
                print(f"{run['setting']:>32}: {run['examples_per_second']:8,.0f} ex/s, AUC {run['auc']:.4f}, "
                      f"logloss {run['logloss']:.4f}, CPU-s per 1k {run['cpu_s_per_1k']:.3f}"
                      + (f", {sent:,.0f} B sent per example" if sent is not None else ""))
        finally:
            stop_stack(home)
    by_ranks = {r["ranks"]: r for r in runs if r["ranks"]}
    summary = {}
    if 1 in by_ranks and 2 in by_ranks:
        summary = {"rate_2_over_1": by_ranks[2]["examples_per_second"] / by_ranks[1]["examples_per_second"],
                   "auc_2_minus_1": by_ranks[2]["auc"] - by_ranks[1]["auc"]}
        print(f"2 ranks / 1 rank: {summary['rate_2_over_1']:.2f}x the rate, AUC {summary['auc_2_minus_1']:+.5f}")
    same = len({r["digest"] for r in runs}) == 1
    print(f"same examples learned in every setting: {same}")
    write_result(args.name, {"rows": args.rows, "model": args.model, "batch_size": args.batch_size,
                             "partitions": args.partitions, "tables": args.tables,
                             "publish_every_s": args.publish_every_s, "delta_every_s": args.delta_every_s,
                             "counts": args.count, "crosses": args.cross,
                             "data": f"{source}, joined by one join worker",
                             "runs": runs, **summary, "same_examples_everywhere": same})


if __name__ == "__main__":
    main()
