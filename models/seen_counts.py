"""Count features: how often the model has already learned from each counted key's value, and
how many of those were clicks.

For each key of ``FeatureSpec.counts`` (a field, or a cross among the spec's crosses) an example
gets one more wide coordinate: the pair (log2 level of the number of earlier learned examples
with the same value, log2 level of how many of them were clicked), levels being 0, 1, 2-3, 4-7,
... FTRL learns one weight per pair of levels, shared by every value, so it says what "seen 5
times, clicked twice" means for a click from the first time a value comes back, long before the
value's own weight has learned as much: the historical counts of the GBDT+LR paper (He et al.,
"Practical Lessons from Predicting Clicks on Ads at Facebook", 2014), kept online. On Frappe,
where each app a user used comes with two apps drawn at random, a user×item pair that recurs is
almost always one the user uses, and an app's clicks so far tell a used app from a random one
(bench/learning.py measures the gain).

Counts are state, like weights: two int32 tables, saved and versioned with the model and sent to
scorers in deltas. A counted field uses its own id range (its hash buckets); a counted cross has
``spec.count_rows`` rows of its own, its two field ids hashed again (Fibonacci hashing), since
telling "never seen" from "seen" needs fewer collisions than a cross's wide weight does. Counts
change only in :meth:`record`, which learning calls after its step, so predictions read the
counts from before the batch (progressive validation: an example never counts itself).
"""

from __future__ import annotations

import torch

from stream.features import COUNT_LEVELS, FeatureSpec, SparseBatch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64: Fibonacci hashing


class SeenCounts:
    def __init__(self, spec: FeatureSpec) -> None:
        self.keys = spec.count_keys()
        self._field_rows = spec.field_rows
        self._shift = 64 - (spec.count_rows.bit_length() - 1)
        self._mask = spec.count_rows - 1
        sizes = [spec.fields[key[0]].buckets if len(key) == 1 else spec.count_rows for key in self.keys]
        self._field_offsets = [int(spec.offsets[key[0]]) for key in self.keys]
        self._bases = [sum(sizes[:k]) for k in range(len(sizes))]
        self.first_level = spec.count_offset + torch.arange(len(self.keys), dtype=torch.int64) * COUNT_LEVELS**2
        self.count = torch.zeros(sum(sizes), dtype=torch.int32)
        self.clicks = torch.zeros(sum(sizes), dtype=torch.int32)
        self.dirty = torch.zeros(sum(sizes), dtype=torch.bool)  # rows counted since the last delta

    def rows(self, batch: SparseBatch) -> torch.Tensor:
        """(B, K) table rows of the batch's counted values."""
        out = torch.empty((len(batch), len(self.keys)), dtype=torch.int64)
        for k, key in enumerate(self.keys):
            if len(key) == 1:
                out[:, k] = batch.ids[:, key[0]] - self._field_offsets[k] + self._bases[k]
            else:
                pair = batch.ids[:, key[0]] * self._field_rows + batch.ids[:, key[1]]  # exact: no overflow
                # the top bits of pair * golden (mod 2**64); the mask drops the sign's extension
                out[:, k] = ((pair * _GOLDEN) >> self._shift).bitwise_and_(self._mask) + self._bases[k]
        return out

    def ids(self, batch: SparseBatch) -> torch.Tensor:
        """(B, K) wide coordinates: each key's levels of its value's counts before this batch."""
        rows = self.rows(batch)
        return self.first_level + level(self.count[rows]) * COUNT_LEVELS + level(self.clicks[rows])

    def record(self, batch: SparseBatch) -> None:
        """Count the batch's values and their clicks (after learning from it)."""
        assert batch.labels is not None, "counting needs labels"
        rows = self.rows(batch)
        flat = rows.reshape(-1)
        self.count.index_put_((flat,), torch.ones(1, dtype=torch.int32).expand(flat.numel()), accumulate=True)
        clicked = rows[batch.labels.to(torch.bool)].reshape(-1)
        self.clicks.index_put_((clicked,), torch.ones(1, dtype=torch.int32).expand(clicked.numel()), accumulate=True)
        self.dirty.index_fill_(0, flat, True)

    # the model's state, under these names (models/lr.py, models/deep_base.py)
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"seen.count": self.count, "seen.clicks": self.clicks}

    def row_group(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        return {"seen": (self.count > 0, ("seen.count", "seen.clicks"))}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.count = tensors["seen.count"].clone()
        self.clicks = tensors["seen.clicks"].clone()


def level(counts: torch.Tensor) -> torch.Tensor:
    """log2 level of each count: 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ... (its bit length)."""
    # frexp's exponent is the bit length; float64 holds every int32 exactly
    return torch.frexp(counts.to(torch.float64)).exponent.clamp_(max=COUNT_LEVELS - 1).to(torch.int64)
