"""One prequential pass: streamrec's lr and wide_deep vs River's LR + FTRL on the same rows.

    python bench/learning.py --rows 1000000 --river-rows 1000000 [--frappe DIR]

Writes bench/results/learning.json. ``*_from_file`` is what ``streamrec evaluate`` runs (the
columnar reader, producers/columns.py); ``lr_from_file_row_reader`` the row reader it replaced.
River is timed on the first --river-rows rows, already read into memory, and streamrec's rate on
those same rows in memory is reported beside it (the ratios are what to compare on a noisy
machine): as row objects (``lr``, the row path) and as the parsed columns ``evaluate`` works on
(``lr_columns``: neither side's parsing timed). ``lr_from_file_speed_over_river`` sets lr reading
and parsing the file against River not reading it.
--frappe DIR points at a local copy of data/frappe/ from hexiangnan/neural_factorization_machine
(fetched for benchmarking, never committed): validation + test splits, in file order.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from streamrec.evaluation import evaluate_columns, evaluate_file, evaluate_rows
from streamrec.models.embedding import EmbeddingConfig, SparseEmbedding  # noqa: E402
from streamrec.producers.columns import first_rows, read_columns  # noqa: E402
from streamrec.producers.generator import generate, oracle_path, write_stream  # noqa: E402
from streamrec.producers.readers import ReaderOptions, Row, read_rows  # noqa: E402
from streamrec.stream.feature_spec import SpecOptions  # noqa: E402
from streamrec.stream.quality_metrics import exact_auc  # noqa: E402

# The Wide&Deep recipe: cross-product features in the wide part. These three are the stream's
# interactions a model over single fields cannot represent (producers/generator.py): the user's
# interest in the item's category, and two context crosses.
CROSSES = (("user_id", "C3"), ("C5", "C6"), ("C7", "C3"))


def river_tokens(row: Row, crosses: tuple[tuple[str, str], ...] = ()) -> dict[str, float]:
    x = {"user=" + row.user_id: 1.0, "item=" + row.item_id: 1.0}
    for name, value in row.features.items():
        if isinstance(value, str):
            x[f"{name}={value}"] = 1.0
        elif value is not None:
            x[f"{name}#{int(math.log(value) ** 2) if value > 2 else int(value)}"] = 1.0
    for a, b in crosses:
        x[f"{a}x{b}={_raw(row, a)}|{_raw(row, b)}"] = 1.0
    return x


def _raw(row: Row, name: str) -> object:
    return row.user_id if name == "user_id" else row.item_id if name == "item_id" else row.features.get(name)


def river_pass(rows: list[Row], crosses: tuple[tuple[str, str], ...] = (), counts: tuple[str, ...] = (),
               **ftrl: float) -> dict[str, float]:
    """River's LR+FTRL, one pass; ``counts`` gives it the same count features as ``--count``
    (log2 levels of how often the key's value was seen before and clicked), kept in dicts beside it."""
    from river import linear_model, optim

    params = {"alpha": 0.05, "beta": 1.0, "l1": 1.0, "l2": 1.0, **ftrl}
    model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**params))
    predictions = np.empty(len(rows))
    seen: collections.Counter[str] = collections.Counter()
    clicks: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    for i, row in enumerate(rows):
        x = river_tokens(row, crosses)
        keys = [f"{key}={'|'.join(str(_raw(row, part)) for part in key.split(':'))}" for key in counts]
        for key in keys:
            x[f"count({key.partition('=')[0]})#{seen[key].bit_length()}|{clicks[key].bit_length()}"] = 1.0
        predictions[i] = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, bool(row.label))
        seen.update(keys)
        if row.label:
            clicks.update(keys)
    wall = time.perf_counter() - started
    labels = np.array([r.label for r in rows])
    return {"auc": exact_auc(predictions, labels), "examples_per_second": len(rows) / wall, "wall_seconds": wall,
            "ftrl": params}


def regulariser_cost(steps: int = 200) -> dict[str, float]:
    """Seconds per step of the same row-wise Adagrad step on a 41-field, 2^16-rows-per-field table:
    without L2, with mini-batch-aware L2 (touched rows only), and with full-table L2 (every row
    shrunk every step). The overheads over the plain step are what each regulariser costs."""
    rows, batch = 41 * (1 << 16), 512 * 41
    ids = torch.randint(0, rows, (steps, batch), generator=torch.Generator().manual_seed(1))

    def timed(l2: float, full_table: bool) -> float:
        table = SparseEmbedding(rows, EmbeddingConfig(l2=l2), torch.Generator().manual_seed(0))
        started = time.perf_counter()
        for k in range(steps):
            unique, inverse, leaf = table.gather(ids[k])
            leaf.grad = torch.ones_like(leaf) * 1e-3
            table.step(unique, inverse, leaf)
            if full_table:
                table.full_table_l2_step()
        return (time.perf_counter() - started) / steps

    plain, mba, full = timed(0.0, False), timed(1e-4, False), timed(0.0, True)
    return {"table_rows": rows, "batch_ids": batch, "plain_step_seconds": plain, "mba_l2_step_seconds": mba,
            "full_table_l2_step_seconds": full, "mba_overhead_seconds": mba - plain,
            "full_table_overhead_seconds": full - plain,
            "mba_overhead_fraction_of_step": (mba - plain) / plain,
            "full_table_overhead_fraction_of_step": (full - plain) / plain}


FRAPPE_TUNED = {"ftrl.alpha": "0.5", "ftrl.l1": "0.1", "ftrl.l2": "0.1"}
# Frappe's negatives are random apps shown in a real log's context (user and context kept), so
# what tells them apart is the user's own apps and which apps go with which context: the
# Wide&Deep recipe's memorising crosses, user x item and item x each context field.
FRAPPE_CROSSES = (("user_id", "item_id"), *(("item_id", f"f{k}") for k in range(2, 10)))
# A random app rarely comes back for the same user, an app the user uses does; and an app's
# clicks so far tell a used app from a random one: counts of the pair, the app and the user, seen
# and clicked (models/seen_counts.py).
FRAPPE_COUNTS = ("user_id:item_id", "item_id", "user_id")


def frappe_pass(folder: Path) -> dict[str, object]:
    files = [folder / "frappe.validation.libfm", folder / "frappe.test.libfm"]
    rows = [r for f in files for r in read_rows(f, "libfm", ReaderOptions(user_field="f0", item_field="f1"))]
    out: dict[str, object] = {"source": "hexiangnan/neural_factorization_machine data/frappe (validation+test, file order)",
                              "rows": len(rows)}
    for name in ("lr", "wide_deep"):
        out[name], _ = evaluate_rows(rows, name, batch_size=512)
    out["lr_tuned"], _ = evaluate_rows(rows, "lr", batch_size=512, model_settings=FRAPPE_TUNED)
    out["lr_tuned"]["settings"] = FRAPPE_TUNED
    deep = {**FRAPPE_TUNED, "dense_lr": "0.01"}
    out["wide_deep_tuned"], _ = evaluate_rows(rows, "wide_deep", batch_size=64, model_settings=deep)
    out["wide_deep_tuned"].update(settings=deep, batch_size=64)

    def tuned(model: str, batch_size: int, spec_options: SpecOptions) -> dict[str, object]:
        """A pass at the tuned FTRL settings, its report annotated with what was run."""
        report, _ = evaluate_rows(rows, model, batch_size=batch_size, model_settings=FRAPPE_TUNED,
                                  spec_options=spec_options)
        report.update(settings=FRAPPE_TUNED, batch_size=batch_size, crosses=[list(c) for c in spec_options.crosses])
        if spec_options.counts:
            report["counts"] = list(spec_options.counts)
        return report

    crossed = SpecOptions(crosses=FRAPPE_CROSSES)
    out["lr_tuned_crosses"] = tuned("lr", 512, crossed)
    out["wide_deep_tuned_crosses"] = tuned("wide_deep", 64, crossed)
    crosses = [list(c) for c in FRAPPE_CROSSES]
    out["river_lr_ftrl"] = river_pass(rows)
    out["river_lr_ftrl_l1_0"] = river_pass(rows, l1=0.0)
    out["river_lr_ftrl_tuned"] = river_pass(rows, alpha=0.5, l1=0.1, l2=0.1)
    out["river_lr_ftrl_tuned_crosses"] = {**river_pass(rows, FRAPPE_CROSSES, alpha=0.5, l1=0.1, l2=0.1),
                                          "crosses": crosses}
    # count features (models/seen_counts.py)
    counted = SpecOptions(crosses=FRAPPE_CROSSES, counts=FRAPPE_COUNTS)
    out["lr_tuned_crosses_counts"] = tuned("lr", 512, counted)
    for batch in (64, 16):
        out[f"wide_deep_tuned_crosses_counts_batch{batch}"] = tuned("wide_deep", batch, counted)
    out["river_lr_ftrl_tuned_crosses_counts"] = {
        **river_pass(rows, FRAPPE_CROSSES, FRAPPE_COUNTS, alpha=0.5, l1=0.1, l2=0.1),
        "crosses": crosses, "counts": list(FRAPPE_COUNTS)}
    return out


def synthetic_pass(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.tsv"
        write_stream(generate(args.rows, seed=7), data, seed=7)
        oracle = json.loads(oracle_path(data).read_text())
        out.update({"source": "producers.generator seed 7", "oracle_auc": oracle["oracle_auc"]})
        opts = ReaderOptions(user_field="C1", item_field="C2")
        for name in ("lr", "wide_deep"):
            # what `streamrec evaluate` runs: the columnar reader (producers/columns.py)
            report, _ = evaluate_file(data, "criteo", name, reader_options=opts, batch_size=args.batch_size)
            out[f"{name}_from_file"] = report
            print(name, "from file", report, flush=True)
        for name in ("lr", "wide_deep"):
            report, _ = evaluate_file(data, "criteo", name, reader_options=opts, batch_size=args.batch_size,
                                      spec_options=SpecOptions(crosses=CROSSES))
            out[f"{name}_from_file_with_crosses"] = {**report, "crosses": [list(c) for c in CROSSES]}
            print(name, "from file with crosses", report, flush=True)
        report, _ = evaluate_rows(read_rows(data, "criteo", opts), "lr", batch_size=args.batch_size)
        out["lr_from_file_row_reader"] = report
        print("lr from file, row reader", report, flush=True)
        rows = list(read_rows(data, "criteo", opts))[: args.river_rows]
        same = {}
        for name in ("lr", "wide_deep"):
            report, _ = evaluate_rows(rows, name, batch_size=args.batch_size)
            same[name] = report
        # The same rows as parsed columns in memory: what `evaluate` runs after pyarrow has read
        # the file. Neither side's parsing is timed, each does its own featurizing.
        chunks = list(first_rows(read_columns(data, "criteo", opts), args.river_rows))
        for name in ("lr", "wide_deep"):
            report, _ = evaluate_columns(chunks, name, batch_size=args.batch_size)
            same[f"{name}_columns"] = report
        del chunks
        same["river_lr_ftrl"] = river_pass(rows)
        same["river_lr_ftrl_with_crosses"] = {**river_pass(rows, CROSSES), "crosses": [list(c) for c in CROSSES]}
        for name in ("lr", "wide_deep", "lr_columns", "wide_deep_columns"):
            same[f"{name}_speed_over_river"] = same[name]["examples_per_second"] / same["river_lr_ftrl"]["examples_per_second"]
        out["same_rows_in_memory"] = same
        river = same["river_lr_ftrl"]
        # River reads prepared rows (its parsing is not timed); lr reads and parses the file
        out["lr_from_file_speed_over_river"] = out["lr_from_file"]["examples_per_second"] / river["examples_per_second"]
        out["wide_deep_from_file_speed_over_river"] = (out["wide_deep_from_file"]["examples_per_second"]
                                                      / river["examples_per_second"])
        print("same rows", json.dumps(same, indent=1), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--river-rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    args = parser.parse_args()
    out: dict[str, object] = {"rows": args.rows, "river_rows": args.river_rows, "batch_size": args.batch_size}
    if args.rows > 0:
        out["synthetic"] = synthetic_pass(args)
    out["rows"] = args.rows
    if args.frappe:
        out["frappe"] = frappe_pass(args.frappe)
        print("frappe", json.dumps(out["frappe"], indent=1), flush=True)
    out["regulariser"] = regulariser_cost()
    print("regulariser", out["regulariser"])
    write_result("learning" if args.rows > 0 else "learning_frappe", out)


if __name__ == "__main__":
    main()
