"""A growable map from int64 keys to int64 rows, looked up and changed a whole batch at a time.

An open-addressing hash table (linear probing, splitmix64 as the hash) held in one numpy array
of (key, row) pairs, so a probe reads a key and its row with one cache miss. Each batch operation
is one compiled loop over the batch's keys (numba, ``cache=True``: compiled once per install,
then loaded): a loop in Python would cost more than the training step it feeds, and a numpy
formulation (a few array operations per probing round) measured several times slower than the
compiled loop (bench/results/keyed_tables.json, ``index``). The table is kept at most half full
(tombstones included), which keeps the probe sequences short.

Deletion leaves a tombstone, which a lookup walks past and an insertion may reuse; the table is
rebuilt (without tombstones, at a size fitting the live keys) when they add up. Everything is a
function of the sequence of calls, so two tables fed the same calls hold the same slots.
"""

from __future__ import annotations

import numba
import numpy as np

from streamrec.stream.hashing import mix64_one

EMPTY = np.int64(np.iinfo(np.int64).min)  # a slot never used
TOMBSTONE = np.int64(np.iinfo(np.int64).min + 1)  # a slot whose key was deleted
_MIN_SLOTS = 64


@numba.njit(cache=True, inline="always")
def _home(key: int, mask: int) -> int:
    """The first slot of ``key``."""
    return np.int64(mix64_one(key) & np.uint64(mask))


@numba.njit(cache=True)
def _find(table: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> None:
    """``rows[i]``: the row of ``keys[i]``, -1 where it is absent."""
    mask = table.shape[0] - 1
    for i in range(keys.shape[0]):
        key = keys[i]
        slot = _home(key, mask)
        while True:
            held = table[slot, 0]
            if held == key:
                rows[i] = table[slot, 1]
                break
            if held == EMPTY:
                rows[i] = -1
                break
            slot = (slot + 1) & mask


@numba.njit(cache=True)
def _insert(table: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> int:
    """Put each (key, row) in the first empty or deleted slot of its probe sequence; the number
    of tombstones reused."""
    mask = table.shape[0] - 1
    reused = 0
    for i in range(keys.shape[0]):
        slot = _home(keys[i], mask)
        while True:
            held = table[slot, 0]
            if held == EMPTY or held == TOMBSTONE:
                reused += held == TOMBSTONE
                table[slot, 0] = keys[i]
                table[slot, 1] = rows[i]
                break
            slot = (slot + 1) & mask
    return reused


@numba.njit(cache=True)
def _delete(table: np.ndarray, keys: np.ndarray) -> int:
    """Put a tombstone in the slot of each key present; the number deleted."""
    mask = table.shape[0] - 1
    deleted = 0
    for i in range(keys.shape[0]):
        key = keys[i]
        slot = _home(key, mask)
        while True:
            held = table[slot, 0]
            if held == key:
                table[slot, 0] = TOMBSTONE
                deleted += 1
                break
            if held == EMPTY:
                break
            slot = (slot + 1) & mask
    return deleted


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
        _find(self._table, flat, rows)
        return rows.reshape(np.shape(keys))

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add distinct keys that are not in the table, with their rows."""
        keys, rows = _int64s(keys), _int64s(rows)
        if not len(keys):
            return
        if 2 * (self._live + self._tombstones + len(keys)) > self.slots:
            self._rebuild(self._live + len(keys))
        self._tombstones -= _insert(self._table, keys, rows)
        self._live += len(keys)

    def delete(self, keys: np.ndarray) -> None:
        """Remove keys (those absent, or given twice, are removed once)."""
        deleted = _delete(self._table, _int64s(keys))
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
