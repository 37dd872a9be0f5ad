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

import numpy as np
import torch

from streamrec.models.batch_unique import BatchUnique
from streamrec.models.key_index import kernels
from streamrec.models.keyed_rows import FREE, KeyedRows, TableConfig


@dataclass(frozen=True)
class EmbeddingConfig:
    """The embedding table's settings: dimension, row-wise Adagrad learning rate and initial
    accumulator, mini-batch-aware L2, initial scale."""

    dim: int = 8
    lr: float = 0.05
    l2: float = 1e-4          # lambda of the mini-batch-aware regulariser
    init_std: float = 0.01
    adagrad_init: float = 1e-2


def key_normals(keys: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """(len(keys), dim) standard normals that are a function of each key (Box-Muller over two
    hashes per value): a keyed row starts the same whenever and wherever its key is admitted."""
    keys = np.ascontiguousarray(keys.numpy(), dtype=np.int64)
    salt = (seed * 0x2545F491 + 2**63) % 2**64 - 2**63  # wrapped into an int64, as numpy would
    return torch.from_numpy(kernels().key_normals(keys, dim, salt))


class SparseEmbedding:
    """A (rows, dim) table with per-row Adagrad state and occurrence counts. With ``keyed`` its ids
    are keys and its rows are handed out by a :class:`KeyedRows` (models/keyed_rows.py); otherwise
    an id is its row."""

    def __init__(self, rows: int, config: EmbeddingConfig, generator: torch.Generator,
                 keyed: tuple[TableConfig, np.ndarray, int, int] | None = None, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.table: KeyedRows | None = None
        if keyed is not None:
            rows = 1024
            self.weight = torch.zeros(rows, config.dim)
        else:
            self.weight = torch.randn(rows, config.dim, generator=generator) * config.init_std
        self.accum = torch.full((rows,), config.adagrad_init)  # row-wise Adagrad: one scalar per row
        self.counts = torch.zeros(rows)
        self.dirty = torch.zeros(rows, dtype=torch.bool)  # rows stepped since the last delta
        self._unique = BatchUnique(rows)
        if keyed is not None:
            table_config, regions, always_from, max_rows = keyed
            self.table = KeyedRows(table_config, regions, always_from, self, capacity=rows, max_rows=max_rows)

    # ---------------------------------------------------------------- keyed rows (RowOwner)

    def grow_rows(self, rows: int) -> None:
        extra = rows - self.weight.shape[0]
        self.weight = torch.cat([self.weight, torch.zeros(extra, self.config.dim)])
        self.accum = torch.cat([self.accum, torch.full((extra,), self.config.adagrad_init)])
        self.counts = torch.cat([self.counts, torch.zeros(extra)])
        self.dirty = torch.cat([self.dirty, torch.zeros(extra, dtype=torch.bool)])
        self._unique.size = rows

    def rows_loaded(self, rows: int) -> None:
        self.dirty = torch.zeros(rows, dtype=torch.bool)
        self._unique.size = rows

    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """Rows given to ``keys`` start from their keys' seeded values; freed rows (key FREE) hold
        zeros. Adagrad state and counts start again."""
        if bool((keys == FREE).all()):  # evicted rows: no key to draw from
            self.weight.index_fill_(0, rows, 0.0)
        else:
            values = key_normals(keys, self.config.dim, self.seed) * self.config.init_std
            values[keys == FREE] = 0.0
            self.weight.index_copy_(0, rows, values)
        self.accum.index_fill_(0, rows, self.config.adagrad_init)
        self.counts.index_fill_(0, rows, 0.0)
        self.dirty.index_fill_(0, rows, True)  # a delta carries the new key (or the eviction)

    def rows_between(self, start: int, stop: int) -> torch.Tensor:
        """The learned rows of the ids in ``[start, stop)`` (one field's): rows with counts, held by such a key."""
        learned = self.counts > 0
        if self.table is None:
            return torch.nonzero(learned[start:stop]).squeeze(1) + start
        keys = torch.from_numpy(self.table.keys)
        return torch.nonzero(learned & (keys >= start) & (keys < stop)).squeeze(1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows that score ``ids`` (no state changes)."""
        return ids if self.table is None else self.table.rows(ids)

    def gather(self, ids: torch.Tensor, examples: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows for ``ids``: ``(unique rows, inverse index, leaf tensor of unique rows)``.

        Index the leaf with ``inverse`` to get per-occurrence vectors; after backward, the leaf's
        ``.grad`` holds each unique row's summed gradient. A keyed table first admits what has
        earned a row (``examples``: how many examples the ids are of, the table's clock).
        """
        if self.table is not None:
            ids = self.table.learn_rows(ids, examples)
        unique, inverse = self._unique(ids)
        leaf = self.weight.index_select(0, unique).requires_grad_(True)
        return unique, inverse, leaf

    def step(self, unique: torch.Tensor, inverse: torch.Tensor, leaf: torch.Tensor, scale: float = 1.0) -> None:
        """Step the rows of :meth:`gather` on ``scale * leaf.grad`` plus the regulariser."""
        if leaf.grad is None:
            return
        occurrences = torch.bincount(inverse.reshape(-1), minlength=unique.shape[0]).to(self.counts.dtype)
        self.apply(unique, leaf.grad * scale, occurrences, rows=leaf.detach())

    def apply(self, unique: torch.Tensor, grad: torch.Tensor, occurrences: torch.Tensor,
              rows: torch.Tensor | None = None) -> None:
        """One step of the distinct rows ``unique`` on their summed gradients ``grad`` (len(unique),
        dim), having occurred ``occurrences`` times in the batch: the regulariser, Adagrad, counts.
        ``rows``: their current values, if the caller already holds them. A row sharded across
        processes (models/sharded.py) steps here on every process's sum."""
        counts = self.counts.index_select(0, unique) + occurrences
        self.counts.index_copy_(0, unique, counts)
        if rows is None:
            rows = self.weight.index_select(0, unique)
        grad = grad + self.config.l2 * rows / counts.unsqueeze(1)
        accum = self.accum.index_select(0, unique) + grad.pow(2).mean(dim=1)
        self.accum.index_copy_(0, unique, accum)
        self.weight.index_copy_(0, unique, rows - self.config.lr * grad / accum.sqrt().unsqueeze(1))
        self.dirty.index_fill_(0, unique, True)

    def full_table_l2_step(self) -> None:
        """The costly alternative, for benchmarks only: shrink every row on every step."""
        self.weight.mul_(1.0 - self.config.lr * self.config.l2)
