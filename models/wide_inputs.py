"""The wide (FTRL) part's coordinates of a batch: field ids, cross ids, count-feature levels and the bias."""

from __future__ import annotations

import torch

from streamrec.models.seen_counts import SeenCounts
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


def wide_ids(spec: FeatureSpec, batch: SparseBatch, seen: SeenCounts | None = None,
             learning: bool = False) -> torch.Tensor:
    """Every wide coordinate of each example: field ids, cross ids, count levels and the bias
    (``learning``: the counts include the batch's earlier examples, models/seen_counts.py)."""
    bias = torch.full((len(batch), 1), spec.bias_id, dtype=torch.int64)
    if seen is None:
        return torch.cat([batch.ids, batch.cross_ids, bias], dim=1)
    return torch.cat([batch.ids, batch.cross_ids, seen.ids(batch, learning), bias], dim=1)
