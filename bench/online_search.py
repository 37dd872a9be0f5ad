"""The online search (models/online_search.py) beside the defaults, an offline grid and River / Vowpal
Wabbit, on streams of several makers, in one run per stream.

    python bench/online_search.py --rows 200000 --frappe DIR

Streams: Frappe (real, hexiangnan/neural_factorization_machine ``data/frappe``, libfm, fetched
and never committed), the project's generator, River's Agrawal generator (a stream generator
built outside this project: classification function 2, and a concept drift from function 1 to 4
half-way) and a planted-interaction generator written here (two settings: two interacting field
pairs with a Zipf id tail; an interaction that changes half-way).

Per stream and model (``lr``, ``wide_deep``): the defaults; the search; an offline grid over FTRL
alpha x {no extra inputs, every candidate cross and count the search proposed in all its rounds,
from row 0} (plus,
on Frappe, the README's hand-made recipe at batch 512 and 64), and the grid's best again at batch
128; River LR+FTRL; Vowpal Wabbit
logistic, plain and with all quadratic interactions (``-q ff``). AUC, logloss, ex/s and CPU
seconds; the search's compute multiple is its CPU time over the defaults'.
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
from streamrec.evaluation import evaluate_rows  # noqa: E402
from streamrec.models.online_search import SearchSettings  # noqa: E402
from streamrec.producers.readers import ReaderOptions, Row, read_rows  # noqa: E402
from streamrec.stream.feature_spec import SpecOptions  # noqa: E402

FRAPPE_RECIPE = {"crosses": (("user_id", "item_id"), *(("item_id", f"f{i}") for i in range(2, 10))),
                 "counts": ("user_id:item_id", "item_id", "user_id"),
                 "settings": {"ftrl.alpha": "0.5", "ftrl.l1": "0.1", "ftrl.l2": "0.1"}}


def planted_rows(n: int, seed: int, drift: bool) -> list[Row]:
    """Eight categorical fields; clicks from two interacting pairs (neither field tells alone),
    a Zipf-tailed id with its own rate, and noise; with ``drift`` the first pair's interaction
    is replaced by another pair's half-way."""
    rng = np.random.default_rng(seed)
    fields = rng.integers(0, 8, (n, 8))
    ids = rng.zipf(1.2, n) % 20_000
    id_rate = np.random.default_rng(seed + 100).normal(0, 1.0, 20_000)
    first = np.where((fields[:, 0] + fields[:, 1]) % 4 == 0, 1.5, -0.5)
    later = np.where((fields[:, 4] * fields[:, 5]) % 5 == 1, 1.5, -0.5)
    pair = np.where(np.arange(n) < n // 2, first, later) if drift else first
    logit = -1.5 + pair + np.where(fields[:, 2] == fields[:, 3], 1.0, -0.3) + id_rate[ids]
    labels = rng.random(n) < 1 / (1 + np.exp(-logit))
    return [Row(int(y), f"u{rng_user}", f"i{k}", float(i), {f"F{j}": f"v{v}" for j, v in enumerate(row)})
            for i, (y, k, row, rng_user) in enumerate(zip(labels, ids, fields, rng.integers(0, 3000, n)))]


def agrawal_rows(n: int, seed: int, drift: bool) -> list[Row]:
    from river.datasets import synth

    if drift:
        stream = synth.ConceptDriftStream(synth.Agrawal(classification_function=1, seed=seed, perturbation=0.05),
                                          synth.Agrawal(classification_function=4, seed=seed + 1, perturbation=0.05),
                                          position=n // 2, width=2_000, seed=seed)
    else:
        stream = synth.Agrawal(classification_function=2, seed=seed, perturbation=0.05)
    rows = []
    for i, (x, y) in enumerate(stream.take(n)):
        features = {k: (f"{k}{v}" if k in ("elevel", "car", "zipcode") else float(v)) for k, v in x.items()}
        rows.append(Row(int(y), str(features.pop("zipcode")), str(features.pop("car")), float(i), features))
    return rows


def run(rows: list[Row], model: str, **kwargs) -> dict[str, object]:
    cpu = time.process_time()
    report, _ = evaluate_rows(rows, model, **kwargs)
    out = {k: report[k] for k in ("auc", "auc_window", "logloss", "examples_per_second")}
    out["cpu_seconds"] = time.process_time() - cpu
    if "search" in report:
        out["search"] = {k: report["search"][k] for k in ("configuration", "adopted", "promotions", "changes",
                                                          "compute_multiple", "learning_multiple", "cpu_multiple",
                                                          "candidates")}
    return out


def candidates_of(search: dict[str, object]) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Every candidate the search proposed in its rounds (given to the grid from row 0)."""
    keys = list(search["candidates"])
    crosses = tuple(tuple(k.split(":")) for k in keys if not k.startswith("count:"))
    return crosses, tuple(k[len("count:"):] for k in keys if k.startswith("count:"))


def stream_runs(name: str, rows: list[Row], models: list[str], peers: bool) -> dict[str, object]:
    print(f"== {name} ({len(rows):,} rows, click rate {np.mean([r.label for r in rows]):.3f})", flush=True)
    out: dict[str, object] = {"rows": len(rows)}
    for model in models:
        runs: dict[str, object] = {"defaults": run(rows, model), "search": run(rows, model, search=SearchSettings())}
        crosses, counts = candidates_of(runs["search"]["search"])
        runs["candidates"] = {"crosses": [list(c) for c in crosses], "counts": list(counts)}
        grid = {}
        for alpha in ("0.05", "0.15", "0.5"):
            for structure, options in (("plain", SpecOptions()),
                                       ("candidates", SpecOptions(crosses=crosses, counts=counts))):
                grid[f"alpha={alpha} {structure}"] = run(rows, model, spec_options=options,
                                                         model_settings={"ftrl.alpha": alpha})
        if name == "frappe":
            recipe = SpecOptions(crosses=FRAPPE_RECIPE["crosses"], counts=FRAPPE_RECIPE["counts"])
            for batch in (512, 64):
                grid[f"README recipe, batch {batch}"] = run(rows, model, spec_options=recipe, batch_size=batch,
                                                            model_settings=FRAPPE_RECIPE["settings"])
        best = chosen = max(grid, key=lambda k: grid[k]["auc"])
        # whether the batch size matters: the best configuration again with a quarter of the batch
        if not best.startswith("README"):
            alpha, structure = best.removeprefix("alpha=").split(" ")
            options = SpecOptions(crosses=crosses, counts=counts) if structure == "candidates" else SpecOptions()
            grid[f"{best}, batch 128"] = run(rows, model, spec_options=options, batch_size=128,
                                             model_settings={"ftrl.alpha": alpha})
            best = max(grid, key=lambda k: grid[k]["auc"])
        runs["grid"] = grid
        runs["grid_best"] = {"configuration": best, **grid[best]}
        runs["search"]["compute_multiple_cpu"] = runs["search"]["cpu_seconds"] / runs["defaults"]["cpu_seconds"]
        # over one model of the configuration the search ends with (the grid's best at the search's
        # batch: the defaults read fewer inputs, so their CPU time is a cheaper model's)
        runs["search"]["compute_multiple_cpu_best"] = runs["search"]["cpu_seconds"] / grid[chosen]["cpu_seconds"]
        out[model] = runs
        s, d, g = runs["search"], runs["defaults"], runs["grid_best"]
        print(f"  {model:10s} defaults {d['auc']:.4f}  search {s['auc']:.4f} (window {s['auc_window']:.4f}, "
              f"{s['compute_multiple_cpu']:.2f}x CPU, {s['compute_multiple_cpu_best']:.2f}x the best's, "
              f"adopted {s['search']['adopted']})  grid best {g['auc']:.4f} "
              f"[{best}]", flush=True)
    if peers:
        out["river_lr_ftrl"] = river_pass(rows)
        out["vw_logistic"] = vw_pass(rows)
        out["vw_quadratic"] = vw_pass(rows, "-q ff")
        print("  peers: " + "  ".join(f"{k} {out[k]['auc']:.4f}" for k in ("river_lr_ftrl", "vw_logistic",
                                                                         "vw_quadratic")), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--models", default="lr,wide_deep")
    parser.add_argument("--streams", default="frappe,synthetic,agrawal,agrawal-drift,planted,planted-drift")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--name", default="online_search")
    args = parser.parse_args()
    models = args.models.split(",")
    results = {}
    for name in args.streams.split(","):
        if name == "frappe":
            if args.frappe is None:
                print("== frappe skipped: no --frappe DIR")
                continue
            files = [args.frappe / "frappe.validation.libfm", args.frappe / "frappe.test.libfm"]
            rows = [r for f in files for r in read_rows(f, "libfm", ReaderOptions(user_field="f0", item_field="f1"))]
        elif name == "synthetic":
            with tempfile.TemporaryDirectory() as tmp:
                rows, _summary = synthetic_rows(Path(tmp), args.rows, 3)
        elif name.startswith("agrawal"):
            rows = agrawal_rows(args.rows, 7, drift=name.endswith("drift"))
        else:
            rows = planted_rows(args.rows, 11, drift=name.endswith("drift"))
        results[name] = stream_runs(name, rows, models, not args.no_peers)
    write_result(args.name, {"rows": args.rows, "streams": results, "search_settings": vars(SearchSettings()),
                             "data": "Frappe from hexiangnan/neural_factorization_machine (validation+test, file "
                                     "order); producers/generator.py seed 3; river.datasets.synth.Agrawal; "
                                     "bench/online_search.py planted_rows"})


if __name__ == "__main__":
    main()
