"""One model learned by 1 rank and by 2 ranks (models/sharded.py), side by side on the same streams.

    python bench/sharded_training.py --rows 200000 [--repeats 2] [--batch-sizes 1024,4096] [--model wide_deep]
                                     [--tables hashed|keyed] [--frappe DIR]

Each run is streamrec/sharded_evaluation.py: N gloo ranks on this machine, one compute thread
each, every global batch split into N shares; tables sharded by row, the network replicated.
Runs alternate (1 rank, 2 ranks, 1 rank, ...) so the machine's drift hits both alike. Per stream:
examples/s of the learning loop (featurize + learn, the slowest rank's time; reading the log is
not counted), its ratio 2 ranks / 1 rank, CPU seconds per 1,000 examples per rank, AUC and
logloss of both and their difference (they learn the same model: it must be float noise), the
payload bytes every rank together sent per example, and for reference the AUC of one ordinary
process with its default per-example FTRL steps (what learning in global mini-batches costs).

Streams: this project's generator; its long-tail generator; River's Agrawal generator written
as a Criteo log (a log this project did not write); Frappe (hexiangnan/neural_factorization_machine ``data/frappe``,
libFM; its validation and test files, fetched, never committed) when ``--frappe DIR`` holds them.
Each global batch size is a run of its own: a step's exchanges cost about the same whatever its
size, so the share of them in a step falls as the batch grows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SYNTHETIC_FIELDS, write_agrawal_criteo, write_result  # noqa: E402


def _streams(folder: Path, rows: int, frappe: Path | None) -> list[tuple[str, str, str, Any]]:
    from streamrec.producers.generator import generate, write_stream
    from streamrec.producers.long_tail_generator import generate_long_tail
    from streamrec.producers.readers import ReaderOptions

    synthetic, long_tail, agrawal = folder / "synthetic.tsv", folder / "long_tail.tsv", folder / "agrawal.tsv"
    write_stream(generate(rows, seed=7), synthetic, seed=7)
    write_stream(generate_long_tail(rows, seed=7), long_tail, seed=7)
    write_agrawal_criteo(agrawal, rows, seed=7)
    criteo = ReaderOptions(**SYNTHETIC_FIELDS)
    streams = [("synthetic", str(synthetic), "criteo", criteo), ("long_tail", str(long_tail), "criteo", criteo),
               ("agrawal", str(agrawal), "criteo", criteo)]
    if frappe:
        joined = folder / "frappe.libfm"
        joined.write_text("".join((frappe / f"frappe.{split}.libfm").read_text() for split in ("validation", "test")))
        streams.append(("frappe", str(joined), "libfm", ReaderOptions(user_field="f0", item_field="f1")))
    return streams


def _one_process_auc(path: str, fmt: str, reader: Any, model: str, rows: int, batch_size: int, keyed: bool) -> float:
    import itertools

    from streamrec.evaluation import evaluate_rows
    from streamrec.producers.readers import read_rows
    from streamrec.stream.feature_spec import SpecOptions

    data = itertools.islice(read_rows(Path(path), fmt, reader), rows)
    report, _model = evaluate_rows(data, model, batch_size=batch_size, spec_options=SpecOptions(keyed=keyed))
    return float(report["auc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1024,4096", help="global batch sizes, a run each")
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--tables", choices=("hashed", "keyed"), default="hashed",
                        help="keyed: sharded by key, each rank within its share of the row budget")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    args = parser.parse_args()

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stream, path, fmt, reader in _streams(Path(tmp), args.rows, args.frappe):
            results[stream] = {}
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                results[stream][str(batch_size)] = _compare(stream, path, fmt, reader, batch_size, args)
    name = "sharded_training" if args.tables == "hashed" else "sharded_training_keyed"
    write_result(name, {"model": args.model, "rows": args.rows, "threads_per_rank": 1, "tables": args.tables,
                        "streams": results})


def _compare(stream: str, path: str, fmt: str, reader: Any, batch_size: int, args: argparse.Namespace) -> dict:
    from streamrec.sharded_evaluation import ShardedRun, evaluate_sharded

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for ranks in (1, 2):
            report = evaluate_sharded(ShardedRun(path, fmt, args.model, ranks, batch_size=batch_size, reader=reader,
                                                 rows=args.rows, tables=args.tables))
            report.pop("predictions")
            runs[ranks].append(report)
            print(f"{stream:10s} batch {batch_size:5d}, {ranks} rank(s): {report['examples_per_second']:8.0f} ex/s, "
                  f"AUC {report['auc']:.4f}, {report['bytes_sent_per_example']:.0f} B/example, CPU-s/1k per rank "
                  f"{', '.join(f'{c:.4f}' for c in report['cpu_seconds_per_1k_per_rank'])}", flush=True)
    one, two = runs[1][-1], runs[2][-1]
    ratios = [b["examples_per_second"] / a["examples_per_second"] for a, b in zip(runs[1], runs[2])]
    reference = _one_process_auc(path, fmt, reader, args.model, args.rows, batch_size, args.tables == "keyed")
    print(f"{stream:10s} batch {batch_size:5d}: 2/1 speed {statistics.median(ratios):.2f}x, AUC difference "
          f"{abs(two['auc'] - one['auc']):.1e}, one process with per-example FTRL: AUC {reference:.4f}", flush=True)
    return {
        "examples": one["examples"], "runs": runs,
        "speed_ratio_2_over_1": statistics.median(ratios), "speed_ratios": ratios,
        "auc_1_rank": one["auc"], "auc_2_ranks": two["auc"], "auc_difference": abs(two["auc"] - one["auc"]),
        "logloss_1_rank": one["logloss"], "logloss_2_ranks": two["logloss"],
        "bytes_per_example_1_rank": one["bytes_sent_per_example"],
        "bytes_per_example_2_ranks": two["bytes_sent_per_example"],
        "auc_one_process_per_example_ftrl": reference,
    }


if __name__ == "__main__":
    main()
