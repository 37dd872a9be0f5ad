"""The distinct ids of a batch and where each occurrence falls among them, in linear time.

``torch.unique(ids, return_inverse=True)`` sorts; on a CPU it was the largest single cost of a
training step. A table's ids are bounded by its row count, so a scratch array of that size finds
duplicates without sorting: every occurrence writes its position into its id's slot, reads back
the surviving position, and the occurrences that read back their own position are the distinct
ids (ARCHITECTURE.md, "Sparse steps", has the timings).

``index_select``/``scatter_`` are used rather than ``tensor[idx]`` indexing, which goes through
the generic advanced-indexing path and is slower on a 1-D index.
"""

from __future__ import annotations

import torch


class BatchUnique:
    """``unique(ids) -> (distinct ids, inverse)`` with ``distinct[inverse] == ids`` for ids in
    ``[0, size)``. The distinct ids come in no particular order."""

    def __init__(self, size: int) -> None:
        self._scratch = torch.empty(0, dtype=torch.int64)
        self.size = size

    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = ids.reshape(-1)
        if flat.numel() == 0:
            return flat.clone(), flat.clone().view(ids.shape)
        if self._scratch.numel() < self.size:
            # allocated on first use: a table that is only read (a scorer) never pays for it.
            # int32 positions: half the bytes of the randomly written scratch, and of the
            # per-occurrence arrays, which made the whole call about a quarter faster.
            self._scratch = torch.empty(self.size, dtype=torch.int32)
        positions = torch.arange(flat.numel(), dtype=torch.int32)
        # with repeated ids one position survives per id; which one does not matter, since
        # every occurrence of that id then reads back the same one
        self._scratch.scatter_(0, flat, positions)
        survivor = self._scratch.index_select(0, flat)
        rank = torch.cumsum(survivor == positions, 0)  # int64, as the inverse must be
        inverse = rank.index_select(0, survivor).sub_(1)
        # every occurrence writes its id to its distinct slot (repeats write the same value):
        # cheaper than selecting the first occurrences with a mask
        distinct = torch.empty(int(rank[-1]), dtype=torch.int64).index_copy_(0, inverse, flat)
        return distinct, inverse.view(ids.shape)
