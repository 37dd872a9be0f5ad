"""A progressive pass over a log by N ranks that learn one model together (models/sharded.py).

Each rank is a process of one gloo process group on this machine, with one compute thread (two
ranks with torch's default thread count each ran ten times slower on a 2-core machine). Every
global batch of ``batch_size`` rows is split into N contiguous shares, one per rank; each rank
featurizes and learns its share, and the model learns what one process would learn from the
whole batch. Rank 0 gathers every share's predictions, so the report is over all examples.

This is the learning core of distributed training on a file, for measurement and tests
(bench/sharded_training.py); the Kafka trainer does not run on ranks yet (issue 24).
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.quality_metrics import exact_auc, logloss_terms

SPEC_SAMPLE_ROWS = 1000


@dataclass(frozen=True)
class ShardedRun:
    """What a sharded pass learns: a log (path, format, reader options), a model with its
    settings, the number of ranks and the global batch size."""

    path: str
    format: str
    model: str
    ranks: int
    batch_size: int = 512
    reader: ReaderOptions = ReaderOptions()
    settings: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    rows: int | None = None               # only the first ``rows`` rows (after ``start_row``)
    start_row: int = 0                    # learn from this row on (the spec still comes from the log's head)
    tensors_in: str | None = None         # start from this whole model (safetensors), written by any rank count
    tensors_out: str | None = None        # rank 0 writes the whole model's tensors here (safetensors)
    timeout_s: float = 300.0              # a collective that waits longer fails the run (a hung rank)


def sharded_settings(name: str, settings: dict[str, str]) -> dict[str, str]:
    """Model ``name``'s settings for sharded learning: its FTRL part (if any) steps once per global batch."""
    from streamrec.models import has_wide_part

    return {**settings, "ftrl.per_example": "false"} if has_wide_part(name) else dict(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _share(size: int, rank: int, ranks: int) -> tuple[int, int]:
    return size * rank // ranks, size * (rank + 1) // ranks


def _rank_main(rank: int, run: ShardedRun, port: int, results: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from streamrec.models import create_model, spec_for
    from streamrec.models.sharded import ShardedModel
    from streamrec.stream.featurizer import Featurizer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=run.ranks,
                            timeout=timedelta(seconds=run.timeout_s))
    try:
        head = itertools.islice(read_rows(Path(run.path), run.format, run.reader), SPEC_SAMPLE_ROWS)
        # hashed tables: keyed ones are not sharded yet (models/sharded.py)
        spec = spec_for(run.model, SpecOptions(keyed=False).infer([r.features for r in head]))
        stop = None if run.rows is None else run.start_row + run.rows
        rows = list(itertools.islice(read_rows(Path(run.path), run.format, run.reader), run.start_row, stop))
        whole = create_model(run.model, spec, seed=run.seed, settings=sharded_settings(run.model, run.settings))
        if run.tensors_in is not None:
            # a whole model, whatever rank count wrote it: each rank keeps its own rows of it
            whole.load_tensors(load_file(run.tensors_in))
        model = ShardedModel(whole)
        featurizer = Featurizer(spec)
        predictions: list[np.ndarray] = []
        started, cpu = time.perf_counter(), time.process_time()
        for at in range(0, len(rows), run.batch_size):
            chunk = rows[at:at + run.batch_size]
            start, stop = _share(len(chunk), rank, run.ranks)
            share = chunk[start:stop]
            batch = featurizer.build([r.user_id for r in share], [r.item_id for r in share],
                                     [r.features for r in share], [r.label for r in share])
            predictions.append(model.learn(batch))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        mine = np.concatenate(predictions) if predictions else np.zeros(0)
        if run.tensors_out is not None:
            tensors = model.full_tensors()
            if rank == 0:
                save_file({k: v.contiguous() for k, v in tensors.items()}, run.tensors_out)
        results.put((rank, mine, [r.label for r in rows], wall, cpu, model.bytes_sent))
    finally:
        dist.destroy_process_group()


def evaluate_sharded(run: ShardedRun) -> dict[str, Any]:
    """Learn ``run`` on ``run.ranks`` local processes; the report over every example (its
    predictions in log order under ``predictions``)."""
    import torch.multiprocessing as mp

    if run.ranks < 1:
        raise ValueError(f"ranks must be at least 1, not {run.ranks}")
    results = mp.get_context("spawn").Queue()
    started = time.perf_counter()
    ranks = mp.start_processes(_rank_main, args=(run, _free_port(), results), nprocs=run.ranks, join=False,
                               start_method="spawn")
    by_rank: dict[int, tuple] = {}
    try:
        while len(by_rank) < run.ranks:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                ranks.join(timeout=0)  # raises if a rank failed
                continue
            by_rank[item[0]] = item[1:]
        while not ranks.join():
            pass
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
                process.join()
    wall = time.perf_counter() - started
    labels = np.asarray(by_rank[0][1], dtype=np.float64)
    # rank r holds share r of every global batch: put the shares back in log order
    parts: list[np.ndarray] = []
    offsets = [0] * run.ranks
    for at in range(0, len(labels), run.batch_size):
        size = min(run.batch_size, len(labels) - at)
        for rank in range(run.ranks):
            start, stop = _share(size, rank, run.ranks)
            parts.append(by_rank[rank][0][offsets[rank]:offsets[rank] + stop - start])
            offsets[rank] += stop - start
    predictions = np.concatenate(parts) if parts else np.zeros(0)
    examples = len(labels)
    learn_wall = max(by_rank[r][2] for r in range(run.ranks))
    return {
        "model": run.model, "ranks": run.ranks, "batch_size": run.batch_size, "examples": examples,
        "auc": exact_auc(predictions, labels), "logloss": float(np.mean(logloss_terms(predictions, labels))),
        "examples_per_second": examples / learn_wall if learn_wall else 0.0,
        "cpu_seconds_per_1k_per_rank": [by_rank[r][3] / examples * 1000 for r in range(run.ranks)],
        "bytes_sent_per_example": sum(by_rank[r][4] for r in range(run.ranks)) / max(examples, 1),
        "wall_seconds": wall, "predictions": predictions,
    }
