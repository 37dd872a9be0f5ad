"""How long building a served model from a stored version takes, from scratch and through kept
fresh models (models.PristineModels, what a scorer uses), side by side in one run.

    python bench/model_load.py --rows 50000 --repeats 7

Each model learns ``rows`` synthetic examples once; its version bytes are then loaded
``repeats`` times each way, alternating, and the median wall and CPU seconds of one load are
reported. Both ways give identical tensors (tests/test_models.py checks it for every model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import synthetic_rows, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default="lr,wide_deep,deepfm,din")
    parser.add_argument("--name", default="model_load")
    args = parser.parse_args()

    import streamrec
    from streamrec.models import PristineModels, model_from_bytes

    with tempfile.TemporaryDirectory() as tmp:
        rows, _summary = synthetic_rows(Path(tmp), args.rows, seed=0)
    records = [{"user_id": r.user_id, "item_id": r.item_id, **r.features} for r in rows]
    labels = [r.label for r in rows]
    results = {}
    for name in args.models.split(","):
        model = streamrec.Model(name)
        for start in range(0, len(records), 512):
            model.learn_many(records[start:start + 512], labels[start:start + 512])
        blob = model.online.to_bytes()
        pristine = PristineModels()
        model_from_bytes(blob, pristine)  # the first load builds the kept model
        timings: dict[str, list[tuple[float, float]]] = {"scratch": [], "kept": []}
        for _ in range(args.repeats):
            for way, keep in (("scratch", None), ("kept", pristine)):
                wall, cpu = time.perf_counter(), time.process_time()
                model_from_bytes(blob, keep)
                timings[way].append((time.perf_counter() - wall, time.process_time() - cpu))
        row = {way: {"wall_s": statistics.median(t[0] for t in values), "cpu_s": statistics.median(t[1] for t in values)}
               for way, values in timings.items()}
        row["version_bytes"] = len(blob)
        row["speedup_wall"] = row["scratch"]["wall_s"] / row["kept"]["wall_s"]
        results[name] = row
        print(f"{name:>10}: {len(blob) / 1e6:6.1f} MB stored; from scratch {row['scratch']['wall_s'] * 1000:6.1f} ms, "
              f"from a kept fresh model {row['kept']['wall_s'] * 1000:6.1f} ms ({row['speedup_wall']:.1f}x)")
    write_result(args.name, {"rows": args.rows, "repeats": args.repeats, "models": results,
                             "data": "synthetic (producers/generator.py, seed 0)"})


if __name__ == "__main__":
    main()
