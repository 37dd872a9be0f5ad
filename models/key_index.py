"""A growable map from int64 keys to int64 rows, looked up and changed a whole batch at a time.

An open-addressing hash table (linear probing, splitmix64 as the hash) held in one numpy array
of (key, row) pairs, so a probe reads a key and its row with one cache miss. Each batch operation
is one compiled loop over the batch's keys (models/key_kernels.py, loaded when the first index is
built). The table is kept at most half full (tombstones included), which keeps the probe
sequences short.

Deletion leaves a tombstone, which a lookup walks past and an insertion may reuse; the table is
rebuilt (without tombstones, at a size fitting the live keys) when they add up. Everything is a
function of the sequence of calls, so two tables fed the same calls hold the same slots.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np

_MIN_SLOTS = 64
EMPTY = np.int64(np.iinfo(np.int64).min)  # a slot never used
TOMBSTONE = np.int64(np.iinfo(np.int64).min + 1)  # a slot whose key was deleted


@functools.cache
def kernels() -> ModuleType:
    """models/key_kernels.py, imported on first use (it loads numba)."""
    return importlib.import_module("streamrec.models.key_kernels")


def _int64s(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).reshape(-1)


class KeyIndex:
    """int64 key -> int64 row, for whole arrays of keys at once (see the module docstring).
    Keys are any int64 but the two reserved values ``EMPTY`` and ``TOMBSTONE``."""

    def __init__(self, slots: int = _MIN_SLOTS) -> None:
        self._allocate(max(_MIN_SLOTS, 1 << max(0, int(slots - 1).bit_length())))

    def _allocate(self, slots: int) -> None:
        self._table = np.full((slots, 2), EMPTY, dtype=np.int64)
        self._live = 0
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def slots(self) -> int:
        return len(self._table)

    def nbytes(self) -> int:
        return self._table.nbytes

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (any shape), -1 where a key is absent."""
        flat = _int64s(keys)
        rows = np.empty(len(flat), dtype=np.int64)
        kernels().find(self._table, flat, rows)
        return rows.reshape(np.shape(keys))

    def get_and_touch(self, keys: np.ndarray, last_used: np.ndarray, now: int) -> tuple[np.ndarray, int]:
        """The row of each of ``keys`` (flat), -1 where absent, and how many are absent; every
        row found is marked used ``now`` in ``last_used``."""
        rows = np.empty(len(keys), dtype=np.int64)
        absent = kernels().find_and_touch(self._table, keys, rows, last_used, now)
        return rows, int(absent)

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add distinct keys that are not in the table, with their rows."""
        keys, rows = _int64s(keys), _int64s(rows)
        if not len(keys):
            return
        self._room_for(len(keys))
        self._tombstones -= kernels().insert(self._table, keys, rows)
        self._live += len(keys)

    def add_absent(self, keys: np.ndarray, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Give each key whose ``rows`` entry is -1 a row of ``candidates``, in the order the keys
        first occur (a key repeated gets the same row), writing it into ``rows``; the keys added."""
        added = np.empty(len(candidates), dtype=np.int64)
        self._room_for(len(candidates))
        count, reused = kernels().add_absent(self._table, keys, rows, candidates, added)
        self._live += count
        self._tombstones -= reused
        return added[:count]

    def _room_for(self, keys: int) -> None:
        if 2 * (self._live + self._tombstones + keys) > self.slots:
            self._rebuild(self._live + keys)

    def delete(self, keys: np.ndarray) -> None:
        """Remove keys (those absent, or given twice, are removed once)."""
        deleted = kernels().delete(self._table, _int64s(keys))
        self._live -= deleted
        self._tombstones += deleted
        # rebuilt when tombstones lengthen the probes, or when the table is mostly empty (after expiry)
        if self._tombstones > self.slots // 4 or (8 * self._live < self.slots and self.slots > _MIN_SLOTS):
            self._rebuild(self._live)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, row), in slot order."""
        keys = self._table[:, 0]
        held = (keys != EMPTY) & (keys != TOMBSTONE)
        return keys[held].copy(), self._table[held, 1].copy()

    def _rebuild(self, live: int) -> None:
        keys, rows = self.items()
        # a power of two at least 2.5 times the live keys: between a fifth and two fifths full, so
        # at most 80 bytes of slots per key; inserting past half full (tombstones too) rebuilds
        self._allocate(max(_MIN_SLOTS, 1 << int(5 * max(live, 1) // 2 - 1).bit_length()))
        self.insert(keys, rows)
