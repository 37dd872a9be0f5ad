"""Progressive validation over a log file (``streamrec evaluate``): predict, update metrics, learn.

The same step the trainer worker runs on the stream, without Kafka: useful to compare models
and to measure the learning core's own rate.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import torch

from streamrec.models import REGISTRY, OnlineModel, create_model, history_ttl_seconds, spec_for
from streamrec.models.keyed_rows import table_summary
from streamrec.models.online_search import OnlineSearch, SearchSettings
from streamrec.models.progressive import progressive_step
from streamrec.producers.columns import columnar_fields, first_rows, read_columns
from streamrec.producers.readers import ReaderOptions, ReadStats, Row, read_rows
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.columns import ColumnChunk
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import SPEC_SAMPLE_ROWS, SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.quality_metrics import StreamingMetrics
from streamrec.stream.sparse_batch import SparseBatch


def batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def evaluate_rows(rows: Iterable[Row], model_name: str, *, batch_size: int = 512, window: int = 10_000,
                  spec_options: SpecOptions = SpecOptions(), seed: int = 0,
                  model_settings: dict[str, str] | None = None, search: SearchSettings | None = None,
                  on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], OnlineModel]:
    """One progressive pass over ``rows``: the report and the model (with ``search``, the champion
    of the online search over settings, crosses and counts, models/online_search.py)."""
    iterator = iter(rows)
    head = list(itertools.islice(iterator, SPEC_SAMPLE_ROWS))
    spec = spec_for(model_name, spec_options.infer([r.features for r in head]))
    model = create_model(model_name, spec, seed=seed, settings=model_settings)
    learner = OnlineSearch(model, search) if search is not None else model
    featurizer = Featurizer(spec)
    # sequence models: the clicks so far, from the stream itself (stream/behaviour_history.py)
    history = (BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields,
                                ttl_seconds=history_ttl_seconds(model_name, model_settings))
               if spec.history_length else None)
    if history is not None:
        history.attach_encoder(featurizer.history_rows)
    metrics = StreamingMetrics(window)
    started = time.perf_counter()
    for chunk in batched(itertools.chain(head, iterator), batch_size):
        users, items, labels = [r.user_id for r in chunk], [r.item_id for r in chunk], [r.label for r in chunk]
        features, times = [r.features for r in chunk], [r.event_time for r in chunk]
        batch = featurizer.build(users, items, features, labels,
                                 history.rows_before_learning(users, items, labels, features)
                                 if history is not None else None, times)
        progressive_step(learner, metrics, batch)
        if history is not None:
            history.after(users, items, labels, features, times)
        if on_batch:
            on_batch(len(chunk))
    report = _report(model_name, metrics, time.perf_counter() - started, learner)
    if history is not None:
        # what every version would store of them (the trainer checkpoints this state)
        report["history"] = {**history.summary(), "state_bytes": len(orjson.dumps(history.state()))}
    return report, _model_of(learner)


def _model_of(learner: OnlineModel | OnlineSearch) -> OnlineModel:
    return learner.champion if isinstance(learner, OnlineSearch) else learner


def _report(model_name: str, metrics: StreamingMetrics, wall: float,
            model: OnlineModel | OnlineSearch) -> dict[str, Any]:
    snap = metrics.snapshot()
    tables = table_summary(_model_of(model))
    return {
        "model": model_name,
        "examples": metrics.examples,
        "auc": snap["auc"],
        "auc_error_bound": snap["auc_error_bound"],
        "auc_window": snap["auc_window"],
        "logloss": snap["logloss"],
        "normalized_entropy": snap["normalized_entropy"],
        "normalized_entropy_window": snap["normalized_entropy_window"],
        "calibration": snap["calibration"],
        "calibration_window": snap["calibration_window"],
        "examples_per_second": metrics.examples / wall if wall > 0 else float("nan"),
        "wall_seconds": wall,
        **model.extra_metrics(),
        **({"tables": tables} if tables else {}),  # keyed tables: rows, admissions, evictions, bytes
    }


def reads_history(model_name: str) -> bool:
    """Whether the model reads the user's history (sequence models), which the columnar path
    does not keep."""
    return bool(getattr(REGISTRY.get(model_name), "history_length", 0))


def evaluate_columns(chunks: Iterable[ColumnChunk], model_name: str, *, batch_size: int = 512,
                     window: int = 10_000, spec_options: SpecOptions = SpecOptions(), seed: int = 0,
                     model_settings: dict[str, str] | None = None, search: SearchSettings | None = None,
                     on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], OnlineModel]:
    """:func:`evaluate_rows` over column chunks: the same mini-batches, predictions and report.
    Reading and featurizing run a chunk or two ahead in a thread (pyarrow, numpy and torch
    release the GIL), so on two cores parsing overlaps learning."""
    if reads_history(model_name):
        raise ConfigError(f"model {model_name!r} reads user histories; use the row path (evaluate_rows)")
    iterator = iter(chunks)
    first = next(iterator, None)
    spec = spec_for(model_name, spec_options.infer(first.feature_dicts(SPEC_SAMPLE_ROWS) if first else []))
    model = create_model(model_name, spec, seed=seed, settings=model_settings)
    learner = OnlineSearch(model, search) if search is not None else model
    featurizer = Featurizer(spec)
    metrics = StreamingMetrics(window)
    batches = map(featurizer.build_columns, itertools.chain([first] if first else [], iterator))
    started = time.perf_counter()
    pending: SparseBatch | None = None

    def learn(mini_batch: SparseBatch) -> None:
        progressive_step(learner, metrics, mini_batch)
        if on_batch:
            on_batch(len(mini_batch))

    threads = torch.get_num_threads()
    torch.set_num_threads(model.threads_beside_reader or threads)
    try:
        with read_ahead(batches) as ready:
            for batch in ready:
                first_row = 0
                if pending is not None:
                    # only the rows that complete the pending mini-batch are copied, not the chunk
                    needed = batch_size - len(pending)
                    if len(batch) < needed:
                        pending = SparseBatch.concat(pending, batch)
                        continue
                    learn(SparseBatch.concat(pending, batch.rows(0, needed)))
                    first_row, pending = needed, None
                whole = first_row + (len(batch) - first_row) // batch_size * batch_size
                for start in range(first_row, whole, batch_size):
                    learn(batch.rows(start, start + batch_size))
                pending = batch.rows(whole, len(batch)) if whole < len(batch) else None
    finally:
        torch.set_num_threads(threads)
    if pending is not None:
        learn(pending)
    return _report(model_name, metrics, time.perf_counter() - started, learner), _model_of(learner)


@contextmanager
def read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Iterator[Any]]:
    """``items`` produced by a thread up to ``depth`` ahead of the consumer; an exception in the
    thread is raised in the consumer, and leaving early stops the thread."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    def consume() -> Iterator[Any]:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def evaluate_file(path: Path, fmt: str, model_name: str, *, limit: int | None = None,
                  reader_options: ReaderOptions = ReaderOptions(), stats: ReadStats | None = None,
                  **kwargs: Any) -> tuple[dict[str, Any], OnlineModel]:
    stats = stats if stats is not None else ReadStats()
    if columnar_fields(fmt, reader_options) and not reads_history(model_name):
        chunks: Iterable[ColumnChunk] = read_columns(path, fmt, reader_options, stats)
        if limit is not None:
            chunks = first_rows(chunks, limit)
        report, model = evaluate_columns(chunks, model_name, **kwargs)
        report["malformed_rows"] = stats.malformed
        return report, model
    rows: Iterable[Row] = read_rows(path, fmt, reader_options, stats)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    report, model = evaluate_rows(rows, model_name, **kwargs)
    report["malformed_rows"] = stats.malformed
    return report, model
