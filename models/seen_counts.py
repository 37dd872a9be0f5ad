"""Count features: how often the model has already learned from each counted key's value, and
how many of those were clicks.

For each key of ``FeatureSpec.counts`` (a field, or a cross among the spec's crosses) an example
gets one more wide coordinate: the pair (log2 level of the number of earlier learned examples
with the same value, log2 level of how many of them were clicked), levels being 0, 1, 2-3, 4-7,
... FTRL learns one weight per pair of levels, shared by every value, so it says what "seen 5
times, clicked twice" means for a click from the first time a value comes back, long before the
value's own weight has learned as much: the historical counts of the GBDT+LR paper (He et al.,
"Practical Lessons from Predicting Clicks on Ads at Facebook", 2014), kept online.

Counts are state, like weights: two int32 tables, saved and versioned with the model and sent to
scorers in deltas. With fixed hashing a counted field uses its own id range (its hash buckets); a
counted cross has ``spec.count_rows`` rows of its own, its two field ids hashed again (Fibonacci
hashing), since telling "never seen" from "seen" needs fewer collisions than a cross's wide weight
does. A keyed spec's counts are a keyed table (models/keyed_rows.py): each counted value has a row
of its own from its first sighting, with the model's expiry and budget (a row costs the bytes of
the same rows hashed, ``count_rows`` per key); a value without a row (the budget full, and the
value seen too rarely to push another out) reads "never seen" and is not counted. Counts
change only in :meth:`record`, which learning calls after its step; while learning, each example
also counts the batch's earlier examples, so the counts are exactly those of a stream taken one
example at a time (progressive validation: an example never counts itself), whatever the batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from streamrec.models.base import own
from streamrec.models.keyed_rows import KeyedRows, TableConfig, count_layout
from streamrec.stream.feature_spec import COUNT_LEVELS, FeatureSpec
from streamrec.stream.hashing import GOLDEN, mix64  # Fibonacci hashing
from streamrec.stream.sparse_batch import SparseBatch

_VALUE_BITS = 56  # a keyed count's key: the count key's index above, its value's key below
_VALUE_MASK = np.int64((1 << _VALUE_BITS) - 1)

_ONE = torch.ones(1, dtype=torch.int32)


class SeenCounts:
    # The batches are small (a few hundred rows, one to three keys): numpy's per-call cost is a
    # fraction of torch's there, so the tables are worked on through numpy views of the tensors.
    """How often each counted key was learned from and clicked so far (two int32 tables), as wide
    coordinates; see the module docstring."""

    def __init__(self, spec: FeatureSpec, tables: TableConfig | None = None) -> None:
        self.keys = spec.count_keys()
        self._pair_keys = spec.pair_keys
        self._shift = np.uint64(64 - (spec.count_rows.bit_length() - 1))
        self.table: KeyedRows | None = None
        if spec.keyed:  # a row per counted value, by key
            config, regions, always_from, max_rows = count_layout(spec, tables or TableConfig())
            rows = 1024
            self.table = KeyedRows(config, regions, always_from, self, capacity=rows, max_rows=max_rows,
                                   shared_rows=False)
        else:
            sizes = [spec.fields[key[0]].buckets if len(key) == 1 else spec.count_rows for key in self.keys]
            rows = sum(sizes)
            bases = [sum(sizes[:k]) for k in range(len(sizes))]
            # a field's row is its id + its base - its offset; a cross's is its hash + its base
            self._add = np.array([base - (int(spec.offsets[key[0]]) if len(key) == 1 else 0)
                                  for base, key in zip(bases, self.keys)], dtype=np.int64)
        self._first_level = spec.count_offset + np.arange(len(self.keys), dtype=np.int64) * COUNT_LEVELS**2
        self.count = torch.zeros(rows, dtype=torch.int32)
        self.clicks = torch.zeros(rows, dtype=torch.int32)
        self.dirty = torch.zeros(rows, dtype=torch.bool)  # rows counted since the last delta
        # the batch ids last read while learning, with their rows and keys (record() counts them)
        self._last: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None
        # Read by several models learning from the same batches (the online search's members):
        # the counts are the stream's, the same for all of them, so they are kept and counted once.
        self.shared = False

    @property
    def first_level(self) -> torch.Tensor:
        """Each key's first wide coordinate (its level pair (0, 0))."""
        return torch.from_numpy(self._first_level)

    # ---------------------------------------------------------------- keyed rows (RowOwner)

    def grow_rows(self, rows: int) -> None:
        extra = rows - self.count.shape[0]
        self.count = torch.cat([self.count, torch.zeros(extra, dtype=torch.int32)])
        self.clicks = torch.cat([self.clicks, torch.zeros(extra, dtype=torch.int32)])
        self.dirty = torch.cat([self.dirty, torch.zeros(extra, dtype=torch.bool)])

    def rows_loaded(self, rows: int) -> None:
        self.dirty = torch.zeros(rows, dtype=torch.bool)

    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """A value given a row (or a freed row) starts from "never seen"."""
        self.count.index_fill_(0, rows, 0)
        self.clicks.index_fill_(0, rows, 0)
        self.dirty.index_fill_(0, rows, True)  # a delta carries the new key (or the eviction)

    # ---------------------------------------------------------------- rows

    def rows(self, batch: SparseBatch) -> torch.Tensor:
        """(B, K) table rows of the batch's counted values."""
        return torch.from_numpy(self._rows(batch.ids.numpy())[0])

    def _rows(self, ids: np.ndarray, learning: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) rows of the batch's counted values, and what tells values apart within the
        batch (their keys; with fixed hashing, the rows). Keyed, ``learning`` gives new values rows."""
        if self.table is not None:
            keys = self._keys(ids)
            tensor = torch.from_numpy(keys)
            rows = self.table.learn_rows(tensor, ids.shape[0]) if learning else self.table.rows(tensor)
            return rows.numpy(), keys
        out = np.empty((ids.shape[0], len(self.keys)), dtype=np.int64)
        with np.errstate(over="ignore"):
            for k, key in enumerate(self.keys):
                if len(key) == 2:  # the pair's key, hashed: its top bits
                    pair = self._pair_keys(ids[:, key[0]], ids[:, key[1]]).view(np.uint64)
                    out[:, k] = ((pair * GOLDEN) >> self._shift).view(np.int64)
                else:
                    out[:, k] = ids[:, key[0]]
        out += self._add
        return out, out

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        """(B, K) keys of a keyed table's counted values: the count key's index in the top bits,
        the value's key (a field id, or a pair's two ids mixed) below."""
        out = np.empty((ids.shape[0], len(self.keys)), dtype=np.int64)
        for k, key in enumerate(self.keys):
            value = (mix64(self._pair_keys(ids[:, key[0]], ids[:, key[1]])).view(np.int64)
                     if len(key) == 2 else ids[:, key[0]])
            out[:, k] = (np.int64(k) << np.int64(_VALUE_BITS)) | (value & _VALUE_MASK)
        return out

    def ids(self, batch: SparseBatch, learning: bool = False) -> torch.Tensor:
        """(B, K) wide coordinates: each key's levels of its value's counts before each example.

        Scoring reads the counts as they are. Learning (``learning``, a labelled batch) also counts
        the batch's earlier examples, as a stream taken one example at a time would have: the
        counts, unlike the weights, then do not depend on the batch size."""
        if learning and self._last is not None and self._last[0] is batch.ids:
            at, distinct = self._last[1], self._last[2]  # another model reading the shared counts
        else:
            at, distinct = self._rows(batch.ids.numpy(), learning)
        seen, clicked = self.count.numpy()[at], self.clicks.numpy()[at]
        if learning:
            assert batch.labels is not None, "learning needs labels"
            earlier_seen, earlier_clicks = earlier_in_batch(distinct, batch.labels.numpy())
            seen, clicked = seen + earlier_seen, clicked + earlier_clicks
            self._last = (batch.ids, at, distinct)  # record() counts the batch it just read: its rows are known
        return torch.from_numpy(self._first_level + level(seen) * COUNT_LEVELS + level(clicked))

    def values(self, ids: np.ndarray) -> np.ndarray:
        """(B, K) what tells the batch's counted values apart: a keyed table's keys, or with fixed
        hashing their rows (models/sharded.py sends them to the rank that counts them)."""
        return self._keys(ids) if self.table is not None else self._rows(ids)[0]

    def coordinates(self, counted: np.ndarray, clicked: np.ndarray) -> torch.Tensor:
        """(B, K) wide coordinates of counts and clicks found elsewhere (models/sharded.py)."""
        return torch.from_numpy(self._first_level + level(counted) * COUNT_LEVELS + level(clicked))

    def count_rows(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Count one example at each of ``rows`` (one row each), a click where ``labels`` is 1."""
        self._count_examples(rows[:, None], torch.from_numpy(labels))

    def record(self, batch: SparseBatch) -> None:
        """Count the batch's values and their clicks (after learning from it); nothing while
        ``shared`` (the owner counts once for every model reading the tables, :meth:`record_shared`)."""
        if not self.shared:
            self.record_shared(batch)

    def recount_from(self, batch: SparseBatch, first_key: int) -> None:
        """Count ``batch`` (every example learned so far) for the count keys from ``first_key`` on
        (new ones: the others have counted it already). Keyed, the values are given rows without
        moving the table's clock: those examples were learned before."""
        assert batch.labels is not None, "counting needs labels"
        if self.table is None:
            at = self._rows(batch.ids.numpy())[0][:, first_key:]
        else:
            keys = self._keys(batch.ids.numpy())[:, first_key:]
            at = self.table.learn_rows(torch.from_numpy(np.ascontiguousarray(keys)), 0).numpy()
        self._count_examples(at, batch.labels)

    def record_shared(self, batch: SparseBatch) -> None:
        assert batch.labels is not None, "counting needs labels"
        last, self._last = self._last, None
        at = last[1] if last is not None and last[0] is batch.ids else self._rows(batch.ids.numpy(), True)[0]
        self._count_examples(at, batch.labels)

    def _count_examples(self, at: np.ndarray, labels: torch.Tensor) -> None:
        """Count each example of ``at`` (B, K rows) once, and once more as a click where labelled 1."""
        flat = torch.from_numpy(at.reshape(-1))
        clicked = torch.from_numpy(at[labels.numpy().astype(bool)].reshape(-1))
        self.count.index_add_(0, flat, _ONE.expand(flat.numel()))
        self.clicks.index_add_(0, clicked, _ONE.expand(clicked.numel()))
        self.dirty.index_fill_(0, flat, True)
        if self.table is not None:  # row 0 is what values without a row read: "never seen"
            self.count[0] = self.clicks[0] = 0

    def counted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What has been counted, whatever the rows: each counted value's key (keyed; with fixed
        hashing its row), its count and its clicks, in key order."""
        count, clicks = self.count.numpy(), self.clicks.numpy()
        if self.table is None:
            rows = np.flatnonzero(count)
            return rows, count[rows], clicks[rows]
        rows = np.flatnonzero((self.table.keys >= 0) & (count[:len(self.table.keys)] > 0))
        order = np.argsort(self.table.keys[rows])
        rows = rows[order]
        return self.table.keys[rows], count[rows], clicks[rows]

    # the model's state, under these names (models/lr.py, models/deep_base.py)
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"seen.count": self.count, "seen.clicks": self.clicks}

    def row_group(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        names = ("seen.count", "seen.clicks")
        if self.table is not None:
            return {"seen": self.table.row_group("seen", names)}
        return {"seen": (self.count > 0, names)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.count = own(tensors["seen.count"], self.count)
        self.clicks = own(tensors["seen.clicks"], self.clicks)


def earlier_in_batch(at: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (example, key) of ``at`` (B, K table rows): how many earlier examples of the batch
    had the same row, and how many of those were clicked. One stable sort: equal rows end up
    together, in batch order, and each one's rank in its run is its count."""
    b, k = at.shape
    flat = at.T.reshape(-1)  # key-major, so batch order within each key; keys' rows never meet
    order = np.argsort(flat, kind="stable")
    grouped = flat[order]
    position = np.arange(flat.size)
    first = np.ones(flat.size, dtype=bool)
    first[1:] = grouped[1:] != grouped[:-1]
    start = np.maximum.accumulate(np.where(first, position, 0))
    clicked = np.tile(labels.astype(np.int64), k)[order]
    before = np.cumsum(clicked) - clicked
    seen, clicks = np.empty(flat.size, dtype=np.int64), np.empty(flat.size, dtype=np.int64)
    seen[order] = position - start
    clicks[order] = before - before[start]
    return seen.reshape(k, b).T, clicks.reshape(k, b).T


def level(counts: np.ndarray) -> np.ndarray:
    """log2 level of each count: 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ... (its bit length)."""
    # frexp's exponent is the bit length; float64 holds every int32 exactly
    return np.minimum(np.frexp(counts.astype(np.float64))[1], COUNT_LEVELS - 1).astype(np.int64)
