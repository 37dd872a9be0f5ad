"""Embedding rows trained sparsely: Adagrad on the rows a batch touches, with mini-batch-aware L2.

Mini-batch-aware regularisation (Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018, section 4.1): L2 is applied only to the rows that occur in the batch,
each scaled by the inverse of that feature's frequency::

    g_j <- g_j + lambda * w_j / n_j      for every row j in the batch (n_j: occurrences so far)

so rare ids are pulled to zero harder than frequent ones, and rows absent from the batch are
neither read nor written. Full-table L2 would touch every row on every step.

Rows step on the *summed* per-example gradient (``scale`` = the batch size times the mean
loss's gradient), as the FTRL part does. On the mean loss's gradient a row's Adagrad accumulator
stayed at its initial value (a gradient of order 1/B squared never outgrew 1e-2), so a row moved
about ``lr * g / 0.1`` with ``g`` a 512th of an example's gradient: in one pass the embeddings
barely learned, and wide_deep was no better than lr (docs/defaults.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamrec.models.batch_unique import BatchUnique


@dataclass(frozen=True)
class EmbeddingConfig:
    """The embedding table's settings: dimension, row-wise Adagrad learning rate and initial
    accumulator, mini-batch-aware L2, initial scale."""

    dim: int = 8
    lr: float = 0.05
    l2: float = 1e-4          # lambda of the mini-batch-aware regulariser
    init_std: float = 0.01
    adagrad_init: float = 1e-2


class SparseEmbedding:
    """A (rows, dim) table with per-row Adagrad state and occurrence counts."""

    def __init__(self, rows: int, config: EmbeddingConfig, generator: torch.Generator) -> None:
        self.config = config
        self.weight = torch.randn(rows, config.dim, generator=generator) * config.init_std
        self.accum = torch.full((rows,), config.adagrad_init)  # row-wise Adagrad: one scalar per row
        self.counts = torch.zeros(rows)
        self.dirty = torch.zeros(rows, dtype=torch.bool)  # rows stepped since the last delta
        self._unique = BatchUnique(rows)

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows for ``ids``: ``(unique ids, inverse index, leaf tensor of unique rows)``.

        Index the leaf with ``inverse`` to get per-occurrence vectors; after backward, the leaf's
        ``.grad`` holds each unique row's summed gradient.
        """
        unique, inverse = self._unique(ids)
        leaf = self.weight.index_select(0, unique).requires_grad_(True)
        return unique, inverse, leaf

    def step(self, unique: torch.Tensor, inverse: torch.Tensor, leaf: torch.Tensor, scale: float = 1.0) -> None:
        """Step the rows of :meth:`gather` on ``scale * leaf.grad`` plus the regulariser."""
        if leaf.grad is None:
            return
        grad = leaf.grad * scale
        occurrences = torch.bincount(inverse.reshape(-1), minlength=unique.shape[0]).to(self.counts.dtype)
        counts = self.counts.index_select(0, unique) + occurrences
        self.counts.index_copy_(0, unique, counts)
        rows = leaf.detach()
        grad = grad + self.config.l2 * rows / counts.unsqueeze(1)
        accum = self.accum.index_select(0, unique) + grad.pow(2).mean(dim=1)
        self.accum.index_copy_(0, unique, accum)
        self.weight.index_copy_(0, unique, rows - self.config.lr * grad / accum.sqrt().unsqueeze(1))
        self.dirty.index_fill_(0, unique, True)

    def full_table_l2_step(self) -> None:
        """The costly alternative, for benchmarks only: shrink every row on every step."""
        self.weight.mul_(1.0 - self.config.lr * self.config.l2)
