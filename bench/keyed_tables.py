"""Keyed tables (models/keyed_rows.py) beside fixed hashing: AUC, logloss, peak memory, rows, speed.

    python bench/keyed_tables.py --streams longtail,longtail-churn,frappe --rows 1000000 --frappe DIR
    python bench/keyed_tables.py --streams longtail --rows 5000000

Streams: the long-tail generator (producers/long_tail_generator.py: ten fields with Zipf ~1.05
popularity over up to 2M values each; ``-churn``: the value at every popularity rank replaced
four times over the stream), the project's generator, and Frappe (real, hexiangnan/
neural_factorization_machine ``data/frappe``, libfm; fetched, never committed).

Each configuration runs in a process of its own (one `evaluate` pass of ``wide_deep`` without the
search), so its peak RSS is its own: fixed hashing at 2^16 and 2^20 rows per field; keyed tables
with the defaults (a row for every key at its first sighting, a row budget that fits in the bytes
2^16 hashing takes, no ttl); keyed with no bound; admission after 2 sightings; admission at first
sight also once the budget is reached (``admit_when_full`` 1: plain LRU); a budget of a quarter
of the rows the defaults held; and on the churn stream, keyed with no bound and a ttl, in examples
and in event time (the files' rows are ``ReaderOptions.seconds_per_row`` apart). A process
that reads 2,000 rows (``baseline``, and ``baseline, keyed``) gives the fixed overhead of the
process, and what the compiled loops of keyed tables add to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402

MODEL = "wide_deep"


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: its own, whereas ru_maxrss keeps the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(path: str, fmt: str, fields: dict, spec: dict, settings: dict, limit: int | None) -> None:
    """One pass, in this process; prints the report with peak RSS and CPU seconds as JSON."""
    from streamrec.evaluation import evaluate_file
    from streamrec.producers.readers import ReaderOptions
    from streamrec.stream.feature_spec import SpecOptions

    started = time.process_time()
    report, model = evaluate_file(Path(path), fmt, MODEL, limit=limit, reader_options=ReaderOptions(**fields),
                                  spec_options=SpecOptions(**spec), model_settings=settings)
    report["cpu_seconds"] = time.process_time() - started
    report["cpu_s_per_1k"] = 1000 * report["cpu_seconds"] / max(report["examples"], 1)
    report["peak_rss_mb"] = peak_rss_mb()
    report["model_tensor_mb"] = sum(t.numel() * t.element_size() for t in model.tensors().values()) / 2**20
    # keyed: the tables' own count (tensors, index, keys, filter); hashed: the tensors
    report["table_mb"] = (sum(t["bytes"] for t in report["tables"].values()) / 2**20 if "tables" in report
                          else report["model_tensor_mb"])
    print("RESULT " + json.dumps(report))


def run(path: Path, fmt: str, fields: dict, spec: dict, settings: dict | None = None,
        limit: int | None = None) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps([str(path), fmt, fields, spec, settings or {}, limit])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"configuration {spec} {settings} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def stream_files(name: str, rows: int, folder: Path, frappe: Path | None) -> tuple[Path, str, dict, dict] | None:
    from streamrec.producers.generator import generate, write_stream
    from streamrec.producers.long_tail_generator import LongTailSettings, generate_long_tail

    if name == "frappe":
        if frappe is None:
            return None
        out = folder / "frappe.libfm"
        out.write_text("".join((frappe / f"frappe.{part}.libfm").read_text() for part in ("validation", "test")))
        return out, "libfm", {"user_field": "f0", "item_field": "f1"}, {"source": "hexiangnan/neural_factorization_machine data/frappe (validation + test)"}
    out = folder / f"{name}.tsv"
    if name == "synthetic":
        summary = write_stream(generate(rows, seed=3), out, seed=3)
    else:
        settings = LongTailSettings(churn=4.0 if name.endswith("churn") else 0.0,
                                    zipf=1.2 if name.endswith("steep") else 1.05)
        summary = write_stream(generate_long_tail(rows, seed=5, settings=settings), out, seed=5)
    return out, "criteo", {"user_field": "C1", "item_field": "C2"}, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--streams", default="longtail,longtail-churn,synthetic,frappe")
    parser.add_argument("--frappe", type=Path, help="folder with frappe.validation.libfm and frappe.test.libfm")
    parser.add_argument("--name", default="keyed_tables")
    parser.add_argument("--skip-2e20", action="store_true", help="leave out fixed hashing at 2^20 rows per field")
    parser.add_argument("--skip-admission", action="store_true", help="leave out admission after 2 sightings")
    parser.add_argument("--skip-variants", action="store_true",
                        help="leave out keyed with no bound, with a quarter budget and with a ttl")
    args = parser.parse_args()
    if args.child:
        _child(*json.loads(args.child))
        return
    results: dict = {"model": MODEL, "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.streams.split(","):
            made = stream_files(name, args.rows, Path(tmp), args.frappe)
            if made is None:
                print(f"== {name} skipped (no --frappe DIR)")
                continue
            path, fmt, fields, summary = made
            print(f"== {name}: {summary.get('rows', '')} rows, oracle AUC {summary.get('oracle_auc', 'n/a')}",
                  flush=True)
            runs: dict = {"baseline": run(path, fmt, fields, {"keyed": False}, limit=2000),
                          # the same with keyed tables: what loading the compiled loops (numba) adds
                          "baseline, keyed": run(path, fmt, fields, {"keyed": True}, limit=2000)}
            runs["hashed 2^16"] = run(path, fmt, fields, {"keyed": False})
            if not args.skip_2e20:
                runs["hashed 2^20"] = run(path, fmt, fields, {"keyed": False, "cat_buckets": 1 << 20})
            keyed = run(path, fmt, fields, {"keyed": True})
            runs["keyed (defaults)"] = keyed
            if not args.skip_variants:
                runs["keyed, no bound"] = run(path, fmt, fields, {"keyed": True}, {"tables.max_rows": "-1"})
            if not args.skip_admission:
                runs["keyed, admit after 2 sightings"] = run(path, fmt, fields, {"keyed": True},
                                                             {"tables.admit_after": "2"})
                runs["keyed, admit at first sight when full"] = run(path, fmt, fields, {"keyed": True},
                                                                    {"tables.admit_when_full": "1"})
            held = max(t["rows"] for t in keyed["tables"].values())
            if not args.skip_variants:
                runs["keyed, budget a quarter of its rows"] = run(path, fmt, fields, {"keyed": True},
                                                                  {"tables.max_rows": str(max(held // 4, 1024))})
            if name.endswith("churn") and not args.skip_variants:
                ttl = args.rows // 8
                runs[f"keyed, no bound, ttl {ttl}"] = run(path, fmt, fields, {"keyed": True},
                                                          {"tables.ttl": str(ttl), "tables.max_rows": "-1"})
                # the same idle time in event time: the files' rows are a fixed step of time apart
                from streamrec.producers.readers import ReaderOptions

                seconds = ttl * ReaderOptions().seconds_per_row
                runs[f"keyed, no bound, ttl {seconds:g} s"] = run(
                    path, fmt, fields, {"keyed": True}, {"tables.ttl_seconds": f"{seconds:g}", "tables.max_rows": "-1"})
            for label, r in runs.items():
                tables = r.get("tables", {})
                rows_held = sum(t["rows"] for t in tables.values())
                evicted = sum(t["evicted"] for t in tables.values())
                print(f"  {label:38s} AUC {r['auc']:.4f} (window {r['auc_window']:.4f})  logloss {r['logloss']:.4f}  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MB  tables {r['table_mb']:7.0f} MB  "
                      f"rows {rows_held:>9,}  evicted {evicted:>9,}  {r['examples_per_second']:8,.0f} ex/s  "
                      f"{r['cpu_s_per_1k']:.3f} CPU s/1k", flush=True)
            results[name] = {"stream": {k: v for k, v in summary.items() if k != "settings"},
                             "settings": summary.get("settings"), "runs": runs}
    write_result(args.name, results)


if __name__ == "__main__":
    main()
