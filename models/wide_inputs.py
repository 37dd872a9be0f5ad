"""The wide (FTRL) part's coordinates of a batch: field ids, cross ids, count-feature levels and the bias."""

from __future__ import annotations

import torch

from streamrec.models.seen_counts import SeenCounts
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


def wide_keys(spec: FeatureSpec) -> list[str]:
    """The names of the spec's switchable wide inputs, in column order: crosses ``A:B``, then
    count features ``count:KEY``."""
    return [f"{a}:{b}" for a, b in spec.crosses] + [f"count:{key}" for key in spec.counts]


def wide_columns(spec: FeatureSpec, ignored: tuple[str, ...]) -> torch.Tensor | None:
    """The columns of :func:`wide_ids` a wide part reads when it ignores ``ignored`` (None: all)."""
    if not ignored:
        return None
    keys = wide_keys(spec)
    unknown = sorted(set(ignored) - set(keys))
    if unknown:
        raise ConfigError(f"ftrl.ignored: {', '.join(unknown)} not among the spec's crosses and counts "
                          f"({', '.join(keys) or 'none'})")
    fields = len(spec.fields)
    kept = list(range(fields)) + [fields + i for i, key in enumerate(keys) if key not in ignored]
    return torch.tensor(kept + [fields + len(keys)], dtype=torch.int64)


def wide_ids(spec: FeatureSpec, batch: SparseBatch, seen: SeenCounts | None = None,
             learning: bool = False, columns: torch.Tensor | None = None,
             count_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Every wide coordinate of each example: field ids, cross ids, count levels and the bias
    (``learning``: the counts include the batch's earlier examples, models/seen_counts.py), or
    only ``columns`` of them (:func:`wide_columns`). ``count_ids``: the count levels already
    found (the ranks of a sharded model ask the counts' owners for them)."""
    bias = torch.full((len(batch), 1), spec.bias_id, dtype=torch.int64)
    if count_ids is None and seen is not None:
        count_ids = seen.ids(batch, learning)
    if count_ids is None:
        ids = torch.cat([batch.ids, batch.cross_ids, bias], dim=1)
    else:
        ids = torch.cat([batch.ids, batch.cross_ids, count_ids, bias], dim=1)
    return ids if columns is None else ids[:, columns]
