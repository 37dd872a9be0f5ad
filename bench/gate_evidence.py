"""Does the quality gate's paired rule decide right on streams it was not built on?

    python bench/gate_evidence.py --rows 100000 [--frappe DIR]

For each stream (the generator at two seeds, and Frappe in libfm format from
hexiangnan/neural_factorization_machine when --frappe is given) and each model (`lr`,
`wide_deep`), three situations are played through the streamrec Python API, the candidate
learning progressively over a window of ``--window`` examples while a frozen copy of the live
version predicts the same examples (stream/paired_window.py), then judged by
versions/quality_gate.judge exactly as the trainer does:

* ``better``: live frozen at 40% of the stream, the candidate kept learning to 70%: should pass;
* ``worse``: live trained to 70%, the candidate a fresh model: should be held;
* ``regime change``: live trained to 70%, then every label flips and the candidate keeps
  learning: should pass (serving must not freeze). The old rule, the candidate's window AUC
  against the number the live version had at its own publish time, is shown beside it.

Each row reports both AUCs on the window, the log-loss gain and its standard error, and the
decision at 2k, 5k and the whole window of paired examples.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import synthetic_rows, write_result  # noqa: E402

CHUNK = 512


def _records(rows):
    return [{"user_id": r.user_id, "item_id": r.item_id, **r.features} for r in rows], [int(r.label) for r in rows]


def _train(model, records, labels) -> np.ndarray:
    """Learn in order; return the predictions made before each chunk was learned."""
    out = []
    for start in range(0, len(records), CHUNK):
        part, ys = records[start:start + CHUNK], labels[start:start + CHUNK]
        out.append(model.predict_proba_many(part))
        model.learn_many(part, ys)
    return np.concatenate(out) if out else np.empty(0)


def _judge(candidate_p, reference_p, labels, sizes, examples_seen):
    from streamrec.stream.paired_window import PairedWindow
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.quality_gate import GateOptions, judge

    decisions = {}
    for size in sizes:
        window = PairedWindow(reference_version=1, size=size)
        window.update(candidate_p[:size], reference_p[:size], np.asarray(labels[:size], dtype=np.float32))
        summary = window.summary()
        decision = judge(VersionMeta(examples_seen=examples_seen, metrics=summary), True,
                         VersionMeta(version=1), GateOptions())
        decisions[size] = {"decision": "passed" if decision.promote else f"held ({decision.reason})",
                           "auc": summary["paired_auc"], "reference_auc": summary["paired_reference_auc"],
                           "logloss_gain": summary["paired_logloss_gain"],
                           "logloss_gain_se": summary["paired_logloss_gain_se"]}
    return decisions


def _stream(name: str, rows, model_name: str, window: int) -> dict:
    import streamrec
    from streamrec.stream.quality_metrics import exact_auc

    records, labels = _records(rows)
    n = len(records)
    early, cut = int(0.4 * n), int(0.7 * n)
    window = min(window, n - cut)
    sizes = sorted({min(2000, window), min(5000, window), window})
    win_records, win_labels = records[cut:cut + window], labels[cut:cut + window]
    out = {}

    trained = streamrec.Model(model_name)
    before = _train(trained, records[:early], labels[:early])
    frozen_early = copy.deepcopy(trained)
    before = np.concatenate([before, _train(trained, records[early:cut], labels[early:cut])])
    live_publish_auc = exact_auc(before[-10_000:], np.asarray(labels[cut - len(before[-10_000:]):cut], float))

    candidate = copy.deepcopy(trained)
    out["better"] = _judge(_train(candidate, win_records, win_labels), frozen_early.predict_proba_many(win_records),
                           win_labels, sizes, cut)
    fresh = streamrec.Model(model_name)
    live_p = trained.predict_proba_many(win_records)
    out["worse"] = _judge(_train(fresh, win_records, win_labels), live_p, win_labels, sizes, cut)
    flipped = [1 - y for y in win_labels]
    candidate = copy.deepcopy(trained)
    candidate_p = _train(candidate, win_records, flipped)
    out["regime_change"] = _judge(candidate_p, live_p, flipped, sizes, cut)
    old_auc = exact_auc(candidate_p[-10_000:], np.asarray(flipped[-10_000:], float))
    out["regime_change_old_rule"] = {
        "candidate_window_auc": old_auc, "live_auc_at_publish": live_publish_auc,
        "decision": "passed" if old_auc >= live_publish_auc - 0.02 else "held (auc_drop)"}
    expected = {"better": "passed", "worse": "held", "regime_change": "passed"}
    for case, want in expected.items():
        final = out[case][window]["decision"]
        row = out[case][window]
        print(f"{name:>14} {model_name:>9} {case:<14} {final:<18} AUC {row['auc']:.4f} vs live {row['reference_auc']:.4f}, "
              f"log-loss gain {row['logloss_gain']:+.4f} ± {row['logloss_gain_se']:.4f}"
              + ("" if final.startswith(want) else "   <-- NOT AS EXPECTED"))
    old = out["regime_change_old_rule"]
    print(f"{name:>14} {model_name:>9} {'(old rule)':<14} {old['decision']:<18} window AUC {old['candidate_window_auc']:.4f} "
          f"vs {old['live_auc_at_publish']:.4f} at publish")
    out["as_expected"] = all(out[c][window]["decision"].startswith(w) for c, w in expected.items())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="Rows per generated stream.")
    parser.add_argument("--window", type=int, default=10_000, help="Paired examples judged (the trainer's --window).")
    parser.add_argument("--seeds", default="1,3")
    parser.add_argument("--models", default="lr,wide_deep")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    parser.add_argument("--name", default="gate_evidence")
    args = parser.parse_args()
    from streamrec.producers.readers import ReaderOptions, read_rows

    streams = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            streams[f"generator seed {seed}"] = synthetic_rows(folder, args.rows, seed)[0]
    if args.frappe:
        files = [args.frappe / "frappe.validation.libfm", args.frappe / "frappe.test.libfm"]
        streams["frappe"] = [r for f in files for r in read_rows(f, "libfm", ReaderOptions(user_field="f0",
                                                                                          item_field="f1"))]
    results = {}
    for stream, rows in streams.items():
        for model in args.models.split(","):
            results[f"{stream} / {model}"] = _stream(stream, rows, model, args.window)
    right = sum(r["as_expected"] for r in results.values())
    print(f"{right} of {len(results)} stream/model pairs decided as expected in all three situations")
    write_result(args.name, {"rows": args.rows, "window": args.window, "results": results,
                             "data": {"generator": "producers/generator.py, seeds " + args.seeds,
                                      "frappe": "hexiangnan/neural_factorization_machine data/frappe "
                                                "(validation+test, file order)" if args.frappe else None}})


if __name__ == "__main__":
    main()
