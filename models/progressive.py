"""Progressive validation, one step: predict, update the streaming metrics, then learn (river's order)."""

from __future__ import annotations

import numpy as np

from streamrec.models.base import OnlineModel
from streamrec.stream.quality_metrics import StreamingMetrics
from streamrec.stream.sparse_batch import SparseBatch


def progressive_step(model: OnlineModel, metrics: StreamingMetrics, batch: SparseBatch) -> np.ndarray:
    """One prequential step: the model's pre-update predictions feed the metrics, then it learns."""
    assert batch.labels is not None
    probabilities = model.learn(batch)  # predictions are taken before the update (models/base.py)
    metrics.update(probabilities, batch.labels.numpy())
    return probabilities
