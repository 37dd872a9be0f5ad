"""Progressive validation over a log file (``streamrec evaluate``): predict, update metrics, learn.

The same step the trainer worker runs on the stream, without Kafka: useful to compare models
and to measure the learning core's own rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from consumers.history import BehaviourHistory
from models import OnlineModel, create_model, spec_for
from producers.readers import ReaderOptions, ReadStats, Row, read_rows
from stream.features import FeatureSpec, Featurizer, SparseBatch
from stream.metrics import StreamingMetrics

SPEC_SAMPLE_ROWS = 1000


def progressive_step(model: OnlineModel, metrics: StreamingMetrics, batch: SparseBatch) -> np.ndarray:
    """One prequential step: the model's pre-update predictions feed the metrics, then it learns."""
    assert batch.labels is not None
    probabilities = model.learn(batch)  # predictions are taken before the update (models/base.py)
    metrics.update(probabilities, batch.labels.numpy())
    return probabilities


@dataclass(frozen=True)
class SpecOptions:
    cat_buckets: int = 1 << 16
    bucket_overrides: dict[str, int] = field(default_factory=dict)
    crosses: tuple[tuple[str, str], ...] = ()
    dense_numeric: bool = True
    seed: int = 0
    # sequence models: fields remembered with each clicked item (FeatureSpec.history_fields)
    history_fields: tuple[str, ...] = ()

    def infer(self, sample: list[dict[str, Any]]) -> FeatureSpec:
        spec = FeatureSpec.infer(sample, cat_buckets=self.cat_buckets, bucket_overrides=self.bucket_overrides,
                                 crosses=self.crosses, dense_numeric=self.dense_numeric, seed=self.seed)
        return dataclasses.replace(spec, history_fields=self.history_fields) if self.history_fields else spec


def batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def evaluate_rows(rows: Iterable[Row], model_name: str, *, batch_size: int = 512, window: int = 10_000,
                  spec_options: SpecOptions = SpecOptions(), seed: int = 0,
                  model_settings: dict[str, str] | None = None,
                  on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], OnlineModel]:
    iterator = iter(rows)
    head = list(itertools.islice(iterator, SPEC_SAMPLE_ROWS))
    spec = spec_for(model_name, spec_options.infer([r.features for r in head]))
    model = create_model(model_name, spec, seed=seed, settings=model_settings)
    featurizer = Featurizer(spec)
    # sequence models: the clicks so far, from the stream itself (consumers/history.py)
    history = (BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
               if spec.history_length else None)
    metrics = StreamingMetrics(window)
    started = time.perf_counter()
    for chunk in batched(itertools.chain(head, iterator), batch_size):
        users, items, labels = [r.user_id for r in chunk], [r.item_id for r in chunk], [r.label for r in chunk]
        batch = featurizer.build(users, items, [r.features for r in chunk], labels,
                                 history.before(users, items) if history is not None else None)
        progressive_step(model, metrics, batch)
        if history is not None:
            history.after(users, items, labels, [r.features for r in chunk])
        if on_batch:
            on_batch(len(chunk))
    wall = time.perf_counter() - started
    snap = metrics.snapshot()
    report = {
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
    }
    return report, model


def evaluate_file(path: Path, fmt: str, model_name: str, *, limit: int | None = None,
                  reader_options: ReaderOptions = ReaderOptions(), stats: ReadStats | None = None,
                  **kwargs: Any) -> tuple[dict[str, Any], OnlineModel]:
    stats = stats if stats is not None else ReadStats()
    rows: Iterable[Row] = read_rows(path, fmt, reader_options, stats)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    report, model = evaluate_rows(rows, model_name, **kwargs)
    report["malformed_rows"] = stats.malformed
    return report, model
