"""Helpers shared by the benchmark scripts: result files and machine notes."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SYNTHETIC_FIELDS = {"user_field": "C1", "item_field": "C2"}  # the generator's user and item columns


def synthetic_rows(folder: Path, rows: int, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """``rows`` synthetic rows (producers/generator.py) written under ``folder`` and read back,
    with the stream's summary (oracle AUC, click rate)."""
    from streamrec.producers.generator import generate, write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows

    data = folder / "synthetic.tsv"
    summary = write_stream(generate(rows, seed=seed), data, seed=seed)
    return list(read_rows(data, "criteo", ReaderOptions(**SYNTHETIC_FIELDS))), summary


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
               "python": platform.python_version(), **payload}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return path


def write_agrawal_criteo(path: Path, rows: int, seed: int) -> dict[str, Any]:
    """River's Agrawal generator (classification function 2, 5% perturbation), written as a
    Criteo-format log: its six numbers as integers I1..I6, zipcode, car and education level as
    C1 (the user), C2 (the item) and C3. A log this project's generator did not make."""
    from river.datasets import synth

    numeric = ("salary", "commission", "age", "hvalue", "hyears", "loan")
    positives = 0
    with path.open("w") as out:
        for x, y in synth.Agrawal(classification_function=2, seed=seed, perturbation=0.05).take(rows):
            ints = [str(int(round(float(x[k])))) for k in numeric] + [""] * 7
            cats = [f"z{x['zipcode']}", f"c{x['car']}", f"e{x['elevel']}"] + [""] * 23
            out.write("\t".join([str(int(y)), *ints, *cats]) + "\n")
            positives += int(y)
    return {"source": f"river.datasets.synth.Agrawal(classification_function=2, seed={seed}, perturbation=0.05)",
            "positive_rate": positives / rows}
