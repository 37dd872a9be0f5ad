"""Every registered model, one prequential pass, beside River's and Vowpal Wabbit's linear baselines.

Two streams: the synthetic one (producers/generator.py, with its oracle AUC) and, with
``--frappe DIR``, the real Frappe data (a local copy of ``data/frappe/`` from
hexiangnan/neural_factorization_machine, validation + test files in file order; fetched, never
committed). On the synthetic stream the sequence models remember each clicked item's category
(``C3``) with it (``--history-field C3``); Frappe names no item attribute. Each model runs with its defaults (``--set`` values apply to all models, e.g. the
Frappe FTRL settings from bench/learning.py). Baselines see the same rows in the same order:
River's LogisticRegression with FTRL-Proximal, and Vowpal Wabbit's logistic regression
(``vowpalwabbit`` package, skipped with a note when it is not installed). Progressive validation
everywhere: predict, then learn.

    python bench/model_family.py --rows 200000 --frappe /tmp/frappe
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import synthetic_rows, write_result  # noqa: E402
from bench.learning import river_pass, river_tokens  # noqa: E402
from streamrec.evaluation import evaluate_rows
from streamrec.models import has_wide_part, is_wide_setting, model_names, parse_settings  # noqa: E402
from streamrec.producers.readers import ReaderOptions, Row, read_rows  # noqa: E402
from streamrec.stream.feature_spec import SpecOptions  # noqa: E402
from streamrec.stream.quality_metrics import exact_auc, logloss_terms  # noqa: E402


def vw_pass(rows: list[Row], extra: str = "") -> dict[str, object]:
    """Vowpal Wabbit's logistic regression, one pass over the rows' tokens; ``extra``: more VW
    options (``-q ff``: every pair of tokens)."""
    try:
        import vowpalwabbit
    except ImportError:
        return {"skipped": "vowpalwabbit is not installed (pip install vowpalwabbit)"}
    options = "--loss_function logistic --link logistic -b 24" + (f" {extra}" if extra else "")
    workspace = vowpalwabbit.Workspace(options + " --quiet")
    predictions = np.empty(len(rows))
    started, cpu = time.perf_counter(), time.process_time()
    for i, row in enumerate(rows):
        tokens = " ".join(k.replace(" ", "_").replace(":", "_").replace("|", "_") for k in river_tokens(row))
        predictions[i] = workspace.predict(f"|f {tokens}")
        workspace.learn(f"{1 if row.label else -1} |f {tokens}")
    wall = time.perf_counter() - started
    workspace.finish()
    labels = np.array([r.label for r in rows])
    return {"auc": exact_auc(predictions, labels), "logloss": float(np.mean(logloss_terms(predictions, labels))),
            "examples_per_second": len(rows) / wall, "wall_seconds": wall, "cpu_seconds": time.process_time() - cpu,
            "options": options}


def run_stream(rows: list[Row], settings: dict[str, str], batch_size: int,
               names: list[str], spec_options: SpecOptions = SpecOptions()) -> dict[str, object]:
    out: dict[str, object] = {"rows": len(rows)}
    for name in names:
        # FTRL settings to models with a wide part; the rest to every model but lr (all wide)
        applicable = {k: v for k, v in settings.items()
                      if (has_wide_part(name) if is_wide_setting(k) else name != "lr")}
        report, _ = evaluate_rows(rows, name, batch_size=batch_size, model_settings=applicable,
                                  spec_options=spec_options)
        out[name] = {k: report[k] for k in ("auc", "auc_window", "logloss", "normalized_entropy", "calibration",
                                            "examples_per_second")}
        out[name].update({k: v for k, v in report.items() if k.startswith("recall_")})  # youtube_dnn
        recall = f"  recall@10 {report['recall_at_10']:.4f}" if "recall_at_10" in report else ""
        print(f"  {name:14s} AUC {report['auc']:.4f}  window {report['auc_window']:.4f}  logloss {report['logloss']:.4f}"
              f"  {report['examples_per_second']:>9,.0f} ex/s{recall}", flush=True)
    # River gets the same FTRL settings as the models (a fair baseline)
    river_ftrl = {k.split(".", 1)[1]: float(v) for k, v in settings.items() if k.startswith("ftrl.")}
    for label, result in (("river_lr_ftrl", river_pass(rows, **river_ftrl)), ("vw_logistic", vw_pass(rows))):
        out[label] = result
        if "auc" in result:
            print(f"  {label:14s} AUC {result['auc']:.4f}  {result['examples_per_second']:>29,.0f} ex/s", flush=True)
        else:
            print(f"  {label:14s} {result['skipped']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="Synthetic rows (0: Frappe only).")
    parser.add_argument("--frappe", type=Path, help="Folder with frappe.validation.libfm and frappe.test.libfm.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="Frappe only: a model setting applied to every model that has it.")
    parser.add_argument("--name", default="model_family")
    parser.add_argument("--models", help="Comma-separated subset (default: every registered model).")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else model_names()
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {', '.join(model_names())}")
    result: dict[str, object] = {"batch_size": args.batch_size}
    if args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            rows, summary = synthetic_rows(Path(tmp), args.rows, seed=7)
        print(f"synthetic: {len(rows):,} rows, oracle AUC {summary['oracle_auc']:.4f}")
        # sequence models remember each clicked item's category (C3) with it, as DIN's cate_id
        result["synthetic"] = {"source": "producers/generator.py seed 7", "oracle_auc": summary["oracle_auc"],
                               "history_fields": ["C3"],
                               **run_stream(rows, {}, args.batch_size, names, SpecOptions(history_fields=("C3",)))}
    if args.frappe:
        files = [args.frappe / "frappe.validation.libfm", args.frappe / "frappe.test.libfm"]
        rows = [r for f in files for r in read_rows(f, "libfm", ReaderOptions(user_field="f0", item_field="f1"))]
        settings = parse_settings(args.settings)
        print(f"frappe: {len(rows):,} rows, settings {settings or 'defaults'}")
        result["frappe"] = {"source": "hexiangnan/neural_factorization_machine data/frappe (validation+test, file order)",
                            "settings": settings, **run_stream(rows, settings, args.batch_size, names)}
    print(json.dumps({k: v for k, v in result.items() if k == "batch_size"}))
    write_result(args.name, result)


if __name__ == "__main__":
    main()
