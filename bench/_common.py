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
