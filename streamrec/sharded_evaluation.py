"""A progressive pass over a log by N ranks that learn one model together (models/sharded.py).

Each rank is a process of one gloo process group on this machine, with one compute thread (ranks
with torch's default thread count each fight over the cores: docs/distributed.md). Every
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.stream.errors import ConfigError
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
    tables: str = "keyed"                 # or "hashed" (fixed hashing)
    crosses: tuple[tuple[str, str], ...] = ()  # wide-part crosses, as --cross
    counts: tuple[str, ...] = ()          # count features, as --count
    rows: int | None = None               # only the first ``rows`` rows (after ``start_row``)
    start_row: int = 0                    # learn from this row on (the spec still comes from the log's head)
    tensors_in: str | None = None         # start from this whole model (safetensors), written by any rank count
    tensors_out: str | None = None        # rank 0 writes the whole model's tensors here (safetensors)
    timeout_s: float = 300.0              # a collective that waits longer fails the run (a hung rank)


def sharded_settings(name: str, settings: dict[str, str]) -> dict[str, str]:
    """Model ``name``'s settings for sharded learning: its FTRL part (if any) steps once per global
    batch; a ``ftrl.per_example`` set true is a :class:`ConfigError` rather than overridden."""
    from streamrec.models import REGISTRY, apply_settings, has_wide_part

    if not has_wide_part(name):
        return dict(settings)
    if "ftrl.per_example" in settings:
        given = {"ftrl.per_example": settings["ftrl.per_example"]}
        if apply_settings(REGISTRY[name].config_class(), given, name).ftrl.per_example:
            raise ConfigError("--set ftrl.per_example=true: ranks step FTRL once per global batch "
                              "(docs/distributed.md)")
    return {**settings, "ftrl.per_example": "false"}


def unshardable(model: str) -> str | None:
    """Why ranks cannot learn ``model`` yet (None: they can)."""
    from streamrec.models import REGISTRY
    from streamrec.models.deep_base import DeepModel

    cls = REGISTRY[model]
    if not issubclass(cls, DeepModel):
        return (f"{model} is not an embedding model; models that shard: "
                + ", ".join(sorted(n for n, c in REGISTRY.items() if issubclass(c, DeepModel) and not c.history_length)))
    if cls.history_length:
        return f"{model} is a sequence model; their histories are not sharded yet"
    return None


def _share(size: int, rank: int, ranks: int) -> tuple[int, int]:
    return size * rank // ranks, size * (rank + 1) // ranks


@dataclass
class RankResult:
    """What one rank learned: its shares' predictions (in order), the log's labels, its learning
    loop's wall and CPU seconds, and the payload bytes it sent."""

    rank: int
    predictions: np.ndarray
    labels: np.ndarray
    wall: float
    cpu: float
    bytes_sent: int


def _learn_rank(run: ShardedRun, rank: int, on_batch: Callable[[int], None] | None = None) -> RankResult:
    """This rank's part of ``run`` in an initialised process group of ``run.ranks``; ``on_batch``
    is told each global batch's size once it is learned."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from streamrec.models import create_model, spec_for
    from streamrec.models.sharded import ShardedModel
    from streamrec.stream.featurizer import Featurizer

    head = itertools.islice(read_rows(Path(run.path), run.format, run.reader), SPEC_SAMPLE_ROWS)
    if run.tables not in ("keyed", "hashed"):
        raise ValueError(f"tables must be keyed or hashed, not {run.tables!r}")
    spec = spec_for(run.model, SpecOptions(keyed=run.tables == "keyed", crosses=run.crosses, counts=run.counts)
                    .infer([r.features for r in head]))
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
        if on_batch is not None:
            on_batch(len(chunk))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if run.tensors_out is not None:
        tensors = model.full_tensors()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in tensors.items()}, run.tensors_out)
    return RankResult(rank, np.concatenate(predictions) if predictions else np.zeros(0),
                      np.asarray([r.label for r in rows], dtype=np.float64), wall, cpu, model.bytes_sent)


def _spawned_rank(rank: int, run: ShardedRun, port: int, results: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=run.ranks,
                            timeout=timedelta(seconds=run.timeout_s))
    try:
        # rank 0 reports progress now and then (a global batch at a time would flood the queue)
        pending = [0, time.monotonic()]

        def progress(examples: int) -> None:
            pending[0] += examples
            if time.monotonic() - pending[1] >= 0.25:
                results.put(("progress", pending[0]))
                pending[:] = [0, time.monotonic()]

        result = _learn_rank(run, rank, progress if rank == 0 else None)
        if rank == 0 and pending[0]:
            results.put(("progress", pending[0]))
        results.put(result)
    finally:
        dist.destroy_process_group()


def _report(run: ShardedRun, by_rank: dict[int, RankResult], wall: float) -> dict[str, Any]:
    labels = by_rank[0].labels
    # rank r holds share r of every global batch: put the shares back in log order
    parts: list[np.ndarray] = []
    offsets = [0] * run.ranks
    for at in range(0, len(labels), run.batch_size):
        size = min(run.batch_size, len(labels) - at)
        for rank in range(run.ranks):
            start, stop = _share(size, rank, run.ranks)
            parts.append(by_rank[rank].predictions[offsets[rank]:offsets[rank] + stop - start])
            offsets[rank] += stop - start
    predictions = np.concatenate(parts) if parts else np.zeros(0)
    examples = len(labels)
    learn_wall = max(result.wall for result in by_rank.values())
    return {
        "model": run.model, "ranks": run.ranks, "batch_size": run.batch_size, "examples": examples,
        "auc": exact_auc(predictions, labels), "logloss": float(np.mean(logloss_terms(predictions, labels))),
        "examples_per_second": examples / learn_wall if learn_wall else 0.0,
        "cpu_seconds_per_1k_per_rank": [by_rank[r].cpu / max(examples, 1) * 1000 for r in range(run.ranks)],
        "bytes_sent_per_example": sum(result.bytes_sent for result in by_rank.values()) / max(examples, 1),
        "wall_seconds": wall, "predictions": predictions,
    }


def evaluate_sharded(run: ShardedRun, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Learn ``run`` on ``run.ranks`` local processes; the report over every example (its
    predictions in log order under ``predictions``). ``on_progress`` is told examples learned."""
    import torch.multiprocessing as mp

    from streamrec.local_stack import free_port

    if run.ranks < 1:
        raise ValueError(f"ranks must be at least 1, not {run.ranks}")
    results = mp.get_context("spawn").Queue()
    started = time.perf_counter()
    ranks = mp.start_processes(_spawned_rank, args=(run, free_port(), results), nprocs=run.ranks, join=False,
                               start_method="spawn")
    by_rank: dict[int, RankResult] = {}
    try:
        while len(by_rank) < run.ranks:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                ranks.join(timeout=0)  # raises if a rank failed
                continue
            if isinstance(item, RankResult):
                by_rank[item.rank] = item
            elif on_progress is not None:
                on_progress(item[1])  # ("progress", examples)
        while not ranks.join():
            pass
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
                process.join()
    wall = time.perf_counter() - started
    return _report(run, by_rank, wall)


def main(argv: list[str] | None = None) -> None:
    """One rank of a sharded pass, launched by torchrun (or by hand with its variables).

        torchrun --nproc-per-node 2 -m streamrec.sharded_evaluation LOG --format criteo \\
            --user-field C1 --item-field C2 --model wide_deep --batch-size 4096 --report-json r.json

    The process group comes from torchrun's variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
    ``WORLD_SIZE``), so the ranks may be on different machines; rank 0 writes the report.
    """
    import argparse
    import json

    import torch
    import torch.distributed as dist

    from streamrec.models.sharded import gather_rows

    parser = argparse.ArgumentParser(prog="python -m streamrec.sharded_evaluation", description=main.__doc__)
    parser.add_argument("path")
    parser.add_argument("--format", default="criteo")
    parser.add_argument("--user-field")
    parser.add_argument("--item-field")
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--batch-size", type=int, default=4096, help="the global batch")
    parser.add_argument("--tables", choices=("keyed", "hashed"), default="keyed")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--report-json")
    args = parser.parse_args(argv)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if name not in os.environ]
    if missing:
        parser.error(f"{', '.join(missing)} not set: launch with torchrun, or set them for each rank")
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout_s))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        run = ShardedRun(args.path, args.format, args.model, world, batch_size=args.batch_size, rows=args.rows,
                         tables=args.tables,
                         reader=ReaderOptions(user_field=args.user_field, item_field=args.item_field),
                         timeout_s=args.timeout_s)
        started = time.perf_counter()
        mine = _learn_rank(run, rank)
        predictions = [p.numpy() for p in gather_rows(torch.from_numpy(mine.predictions).to(torch.float64))]
        stats = gather_rows(torch.tensor([mine.wall, mine.cpu, mine.bytes_sent], dtype=torch.float64))
        if rank == 0:
            by_rank = {r: RankResult(r, predictions[r], mine.labels, float(stats[r][0]), float(stats[r][1]),
                                     int(stats[r][2]))
                       for r in range(world)}
            report = _report(run, by_rank, time.perf_counter() - started)
            report.pop("predictions")
            print(json.dumps(report))
            if args.report_json:
                Path(args.report_json).write_text(json.dumps(report, indent=2))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
