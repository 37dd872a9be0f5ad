"""FTRL stepping after every example (Algorithm 1, ``ftrl.per_example``, the default) beside one
step per mini-batch, in ``lr`` and in ``wide_deep``'s wide part, and beside River's and Vowpal
Wabbit's per-example learners, on the same rows.

    python bench/ftrl_per_example.py --rows 200000 --frappe DIR

Streams: the project's generator (two seeds), the long-tail generator (producers/
long_tail_generator.py), River's Agrawal generator (a stream generator built outside this
project, bench/online_search.py), a planted-interaction stream (bench/online_search.py) and
Frappe (real, hexiangnan/neural_factorization_machine ``data/frappe``, libfm; fetched, never
committed). Every learner reads the same rows, already in memory, in the same order, with no
crosses and no count features; AUC is progressive (each example predicted before it is learned).
Rates: examples per second and CPU seconds per 1,000 examples, measured in this one run, so the
ratios (lr over River) are what to read on a noisy machine. Writes bench/results/ftrl_per_example.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import synthetic_rows, write_result  # noqa: E402
from bench.learning import river_pass  # noqa: E402
from bench.model_family import vw_pass  # noqa: E402
from bench.online_search import agrawal_rows, planted_rows  # noqa: E402
from streamrec.evaluation import evaluate_rows  # noqa: E402
from streamrec.producers.readers import ReaderOptions, Row, read_rows  # noqa: E402


def model_pass(rows: list[Row], model: str, per_example: bool) -> dict[str, float]:
    cpu = time.process_time()
    report, _ = evaluate_rows(rows, model, model_settings={"ftrl.per_example": str(per_example).lower()})
    cpu = time.process_time() - cpu
    return {"auc": report["auc"], "auc_window": report["auc_window"], "logloss": report["logloss"],
            "examples_per_second": report["examples_per_second"], "cpu_s_per_1k": 1000 * cpu / len(rows)}


def long_tail_rows(folder: Path, n: int, seed: int) -> list[Row]:
    from streamrec.producers.generator import write_stream
    from streamrec.producers.long_tail_generator import generate_long_tail

    path = folder / "longtail.tsv"
    write_stream(generate_long_tail(n, seed=seed), path, seed=seed)
    return list(read_rows(path, "criteo", ReaderOptions(user_field="C1", item_field="C2")))


def frappe_rows(folder: Path, limit: int) -> list[Row]:
    rows: list[Row] = []
    for split in ("validation", "test"):
        rows += read_rows(folder / f"frappe.{split}.libfm", "libfm", ReaderOptions(user_field="f0", item_field="f1"))
    return rows[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--streams", default="synthetic,synthetic-seed9,longtail,agrawal,planted,frappe")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    parser.add_argument("--models", default="lr,wide_deep")
    parser.add_argument("--name", default="ftrl_per_example")
    args = parser.parse_args()
    results: dict = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.streams.split(","):
            if name == "frappe" and args.frappe is None:
                print("== frappe skipped (no --frappe DIR)")
                continue
            if name.startswith("synthetic"):
                seed = int(name.partition("seed")[2] or 3)
                rows = synthetic_rows(Path(tmp), args.rows, seed)[0]
            elif name == "longtail":
                rows = long_tail_rows(Path(tmp), args.rows, 5)
            elif name == "agrawal":
                rows = agrawal_rows(args.rows, 7, drift=False)
            elif name == "planted":
                rows = planted_rows(args.rows, 11, drift=False)
            else:
                rows = frappe_rows(args.frappe, args.rows)
            print(f"== {name}: {len(rows):,} rows, click rate {np.mean([r.label for r in rows]):.3f}", flush=True)
            runs = {f"{model}, {kind}": model_pass(rows, model, kind == "per example")
                    for model in args.models.split(",") for kind in ("per example", "per mini-batch")}
            river_cpu = time.process_time()
            runs["river LR+FTRL"] = river_pass(rows)
            runs["river LR+FTRL"]["cpu_s_per_1k"] = 1000 * (time.process_time() - river_cpu) / len(rows)
            runs["vw logistic"] = vw_pass(rows)
            river = runs["river LR+FTRL"]
            for label, r in runs.items():
                if "auc" not in r:
                    print(f"  {label:20s} {r.get('skipped', '')}")
                    continue
                print(f"  {label:20s} AUC {r['auc']:.4f}  {r['examples_per_second']:9,.0f} ex/s "
                      f"({r['examples_per_second'] / river['examples_per_second']:5.1f}x River)"
                      + (f"  {r['cpu_s_per_1k']:.3f} CPU s/1k" if "cpu_s_per_1k" in r else ""), flush=True)
            results[name] = {"rows": len(rows), "runs": runs,
                             "lr_auc_minus_river": runs["lr, per example"]["auc"] - river["auc"],
                             "lr_rate_over_river": runs["lr, per example"]["examples_per_second"]
                             / river["examples_per_second"]}
    write_result(args.name, results)


if __name__ == "__main__":
    main()
