"""A growable map from int64 keys to int64 rows, looked up and changed a whole batch at a time.

An open-addressing hash table (linear probing) held in one numpy array of (key, row) pairs. A Python loop over a
batch's keys would cost more than the training step it feeds, so every operation works on the
whole array of keys: each round of probing is a few numpy operations over the keys still looking,
and the rounds end when every key has found its slot or an empty one. The table is kept at most
half full (tombstones included), which keeps the probe sequences short.

Deletion leaves a tombstone, which a lookup walks past and an insertion may reuse; the table is
rebuilt (without tombstones, at a size fitting the live keys) when they add up. Everything is a
function of the sequence of calls, so two tables fed the same calls hold the same slots.
"""

from __future__ import annotations

import numpy as np

from streamrec.stream.hashing import mix64

EMPTY = np.int64(np.iinfo(np.int64).min)  # a slot never used
TOMBSTONE = np.int64(np.iinfo(np.int64).min + 1)  # a slot whose key was deleted
_MIN_SLOTS = 64


class KeyIndex:
    """int64 key -> int64 row, for whole arrays of keys at once (see the module docstring).
    Keys are any int64 but the two reserved values ``EMPTY`` and ``TOMBSTONE``."""

    def __init__(self, slots: int = _MIN_SLOTS) -> None:
        self._allocate(max(_MIN_SLOTS, 1 << max(0, int(slots - 1).bit_length())))

    def _allocate(self, slots: int) -> None:
        # (key, row) side by side: a probe reads both with one cache miss, not two
        self._table = np.full((slots, 2), EMPTY, dtype=np.int64)
        self._mask = np.int64(slots - 1)
        self._live = 0
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def slots(self) -> int:
        return len(self._table)

    def nbytes(self) -> int:
        return self._table.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(keys) & np.uint64(self._mask)).astype(np.int64)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slot holding each key and its row; -1 and -1 where it is absent."""
        slot = self._home(keys)
        pair = np.take(self._table, slot, axis=0)
        hit = pair[:, 0] == keys
        found = np.where(hit, slot, -1)
        rows = np.where(hit, pair[:, 1], -1)
        looking = np.flatnonzero(~hit & (pair[:, 0] != EMPTY))
        slot = slot[looking]
        while len(looking):
            slot = (slot + 1) & self._mask
            pair = np.take(self._table, slot, axis=0)
            hit = pair[:, 0] == keys[looking]
            found[looking[hit]] = slot[hit]
            rows[looking[hit]] = pair[hit, 1]
            going = ~hit & (pair[:, 0] != EMPTY)
            looking, slot = looking[going], slot[going]
        return found, rows

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (any shape), -1 where a key is absent."""
        flat = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        return self._find(flat)[1].reshape(np.shape(keys))

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add distinct keys that are not in the table, with their rows."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if not len(keys):
            return
        if 2 * (self._live + self._tombstones + len(keys)) > self.slots:
            self._rebuild(self._live + len(keys))
        slot = self._home(keys)
        waiting = np.arange(len(keys))
        table = self._table
        while len(waiting):
            held = table[slot, 0]
            free = (held == EMPTY) | (held == TOMBSTONE)
            self._tombstones -= len(np.unique(slot[free & (held == TOMBSTONE)]))
            # several keys may claim one free slot: the last write wins, the others probe on
            table[slot[free], 0] = keys[waiting[free]]
            placed = free & (table[slot, 0] == keys[waiting])
            table[slot[placed], 1] = rows[waiting[placed]]
            going = ~placed
            waiting, slot = waiting[going], (slot[going] + 1) & self._mask
        self._live += len(keys)

    def delete(self, keys: np.ndarray) -> None:
        """Remove keys (those absent are ignored)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        slot = self._find(keys)[0]
        slot = np.unique(slot[slot >= 0])
        self._table[slot, 0] = TOMBSTONE
        self._live -= len(slot)
        self._tombstones += len(slot)
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
