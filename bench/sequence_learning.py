"""Do the sequence models learn from behaviour on streams they were not tuned on?

    python bench/sequence_learning.py --rows 300000 [--frappe DIR] [--models lr,wide_deep,din,dien,youtube_dnn]

Streams: behaviour streams from producers/behaviour_generator.py at three settings of its own
(match strength, recency decay, history length, share of candidates from recent interest, number
of categories), each with its oracle AUC and its history-blind AUC (the true logit without the
sequence term); and Frappe (hexiangnan/neural_factorization_machine, libfm; no category to
match, so there the history is the user's clicked apps alone) when --frappe is given.

On each stream, in one run: streamrec's models through ``evaluate`` (one pass, progressive
validation, sequence models with ``--history-field C3``), and River's LogisticRegression with
FTRL (a user x category cross), without and with a hand-made match feature: for k = 0..4,
"the candidate's category equals the k-th most recent clicked category" (from the same stream,
in order). Reported: AUC, the share of the reachable gap captured, ``(AUC - blind) / (oracle -
blind)``, and examples per second (wall) with CPU seconds per 1,000 examples.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from bench.learning import river_tokens  # noqa: E402

# Each setting differs from the generator's defaults in every knob it has.
SETTINGS = {
    "strong-recent": {"match_strength": 2.0, "recency_decay": 0.7, "history_length": 5, "recent_share": 0.3,
                      "categories": 40},
    "weak-long": {"match_strength": 1.2, "recency_decay": 0.9, "history_length": 8, "recent_share": 0.5,
                  "categories": 25},
    "sharp-short": {"match_strength": 3.0, "recency_decay": 0.5, "history_length": 3, "recent_share": 0.15,
                    "categories": 100},
}
SEQUENCE_MODELS = ("din", "dien", "youtube_dnn")
HAND_MATCHES = 5


def river_behaviour(rows, category_field: str | None, matches: int) -> dict[str, float]:
    """River LR+FTRL, one pass in stream order; a user x category cross, and with ``matches`` > 0 the
    hand-made features "candidate's category equals the k-th most recent clicked category"."""
    from river import linear_model, optim

    from streamrec.stream.quality_metrics import exact_auc

    model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(alpha=0.05, beta=1.0, l1=1.0, l2=1.0))
    recent: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=matches or 1))
    predictions = np.empty(len(rows))
    started, cpu = time.perf_counter(), time.process_time()
    for i, row in enumerate(rows):
        x = river_tokens(row)
        category = row.features.get(category_field) if category_field else row.item_id
        x[f"user_x_category={row.user_id}|{category}"] = 1.0
        if matches:
            clicks = recent[row.user_id]
            for k in range(min(matches, len(clicks))):
                if clicks[-1 - k] == category:
                    x[f"match@{k}"] = 1.0
        predictions[i] = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, bool(row.label))
        if row.label and matches:
            recent[row.user_id].append(category)
    wall = time.perf_counter() - started
    labels = np.array([r.label for r in rows])
    return {"auc": exact_auc(predictions, labels), "examples_per_second": len(rows) / wall,
            "cpu_s_per_1k": 1000 * (time.process_time() - cpu) / len(rows)}


def streamrec_pass(rows, model: str, history_field: str | None, settings: dict[str, str],
                   history_length: int = 0) -> dict[str, float]:
    from streamrec.evaluation import evaluate_rows
    from streamrec.stream.feature_spec import SpecOptions

    options = SpecOptions(history_fields=(history_field,) if history_field and model in SEQUENCE_MODELS else (),
                          history_length=history_length)
    cpu = time.process_time()
    report, _ = evaluate_rows(rows, model, spec_options=options, model_settings=settings or None)
    return {"auc": report["auc"], "auc_window": report["auc_window"],
            "examples_per_second": report["examples_per_second"],
            "cpu_s_per_1k": 1000 * (time.process_time() - cpu) / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", default=",".join(SETTINGS))
    parser.add_argument("--models", default="lr,wide_deep,din,dien,youtube_dnn")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="A model setting for one model, e.g. din:match_logit=false (repeatable).")
    parser.add_argument("--history-length", type=int, default=0,
                        help="clicks the sequence models read (0: each model's default)")
    parser.add_argument("--no-river", action="store_true")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    parser.add_argument("--name", default="sequence_learning")
    args = parser.parse_args()
    from streamrec.producers.behaviour_generator import BehaviourSettings, generate_behaviour
    from streamrec.producers.generator import write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows

    per_model: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for item in args.settings:
        model, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        per_model[model][key] = value
    results = {}
    streams = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.streams.split(","):
            out = Path(tmp) / f"{name}.tsv"
            summary = write_stream(generate_behaviour(args.rows, args.seed, BehaviourSettings(**SETTINGS[name])),
                                   out, args.seed)
            rows = list(read_rows(out, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
            streams.append((name, rows, "C3", summary["oracle_auc"], summary["blind_auc"], SETTINGS[name]))
    if args.frappe:
        files = [args.frappe / "frappe.validation.libfm", args.frappe / "frappe.test.libfm"]
        rows = [r for f in files for r in read_rows(f, "libfm", ReaderOptions(user_field="f0", item_field="f1"))]
        streams.append(("frappe", rows, None, None, None, {"source": "hexiangnan/neural_factorization_machine "
                                                                     "data/frappe (validation+test, file order)"}))
    for name, rows, field, oracle, blind, settings in streams:
        bounds = "" if oracle is None else f"oracle {oracle:.4f}, history-blind {blind:.4f}"
        print(f"== {name} ({len(rows):,} rows) {bounds}", flush=True)
        runs = {}
        for model in args.models.split(","):
            runs[model] = streamrec_pass(rows, model, field, per_model.get(model, {}), args.history_length)
        if not args.no_river:
            runs["river_lr_ftrl"] = river_behaviour(rows, field, 0)
            runs["river_lr_ftrl_match"] = river_behaviour(rows, field, HAND_MATCHES)
        for model, run in runs.items():
            if oracle is not None:
                run["gap_captured"] = (run["auc"] - blind) / (oracle - blind)
            gap = f"  gap {run['gap_captured']:5.1%}" if "gap_captured" in run else ""
            print(f"  {model:>20}: AUC {run['auc']:.4f}{gap}  {run['examples_per_second']:8,.0f} ex/s  "
                  f"{run['cpu_s_per_1k']:.3f} CPU-s/1k", flush=True)
        results[name] = {"rows": len(rows), "oracle_auc": oracle, "blind_auc": blind, "settings": settings,
                         "runs": runs}
    write_result(args.name, {"rows": args.rows, "seed": args.seed, "history_length": args.history_length,
                             "streams": results,
                             "model_settings": per_model,
                             "data": "producers/behaviour_generator.py (settings per stream)"
                                     + ("; Frappe from hexiangnan/neural_factorization_machine" if args.frappe else "")})


if __name__ == "__main__":
    main()
