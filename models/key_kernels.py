"""The compiled loops keyed tables run: the key index's probes and key-seeded rows.

Loops over a batch's keys, compiled with numba (``cache=True``: compiled once per install, then
loaded from ``__pycache__``). A loop in Python would cost more than the training step it feeds, and
the numpy formulation (a few array operations per probing round over the keys still looking)
measured several times slower (docs/keyed-tables.md, "Speed"). numba and the compiler it loads
take memory and a moment to start, so this module is imported only when the first keyed table is
built (models/key_index.py): a process with fixed hashing never loads it.

The index is one ``(slots, 2)`` int64 array of (key, row) pairs, probed linearly from the key's
``mix64`` (stream/hashing.py, the same function compiled here).
"""

from __future__ import annotations

import numba
import numpy as np

from streamrec.models.key_index import EMPTY, TOMBSTONE
from streamrec.stream.hashing import GOLDEN, splitmix64

# stream/hashing.py's own finaliser, compiled: it is written in operations a scalar has too
_splitmix64 = numba.njit(cache=True, inline="always")(splitmix64)


@numba.njit(cache=True, inline="always")
def mix64_one(value: int) -> np.uint64:
    """stream/hashing.py's ``mix64`` of one int64."""
    return _splitmix64(np.uint64(value) + GOLDEN)


@numba.njit(cache=True, inline="always")
def _home(key: int, mask: int) -> int:
    return np.int64(mix64_one(key) & np.uint64(mask))


@numba.njit(cache=True, inline="always")
def _slot_of(table: np.ndarray, key: int, mask: int) -> int:
    """The slot holding ``key``, -1 if it is absent (its probe reached an empty slot)."""
    slot = _home(key, mask)
    while True:
        held = table[slot, 0]
        if held == key:
            return slot
        if held == EMPTY:
            return -1
        slot = (slot + 1) & mask


@numba.njit(cache=True)
def find(table: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> int:
    """``rows[i]``: the row of ``keys[i]``, -1 where it is absent; the number absent."""
    mask = table.shape[0] - 1
    absent = 0
    for i in range(keys.shape[0]):
        slot = _slot_of(table, keys[i], mask)
        if slot >= 0:
            rows[i] = table[slot, 1]
        else:
            rows[i] = -1
            absent += 1
    return absent


@numba.njit(cache=True)
def find_and_touch(table: np.ndarray, keys: np.ndarray, rows: np.ndarray, last_used: np.ndarray, now: int) -> int:
    """:func:`find`, marking every row found as used ``now``."""
    absent = find(table, keys, rows)
    for i in range(keys.shape[0]):
        if rows[i] >= 0:
            last_used[rows[i]] = now
    return absent


@numba.njit(cache=True)
def insert(table: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> int:
    """Put each (key, row) in the first empty or deleted slot of its probe sequence (the keys are
    distinct and absent); the number of tombstones reused."""
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
def add_absent(table: np.ndarray, keys: np.ndarray, rows: np.ndarray, candidates: np.ndarray,
               added: np.ndarray) -> tuple[int, int]:
    """Where ``rows[i]`` is -1, give ``keys[i]`` the next of ``candidates`` (in the order keys first
    occur) and insert it, or the row it got earlier in this call. ``added`` receives the keys
    given rows; returns how many, and the tombstones reused."""
    mask = table.shape[0] - 1
    count = 0
    reused = 0
    for i in range(keys.shape[0]):
        if rows[i] >= 0:
            continue
        key = keys[i]
        slot = _home(key, mask)
        free = -1
        while True:
            held = table[slot, 0]
            if held == key:
                rows[i] = table[slot, 1]
                break
            if held == TOMBSTONE and free < 0:
                free = slot  # the key may still be further on: keep looking, then take this slot
            elif held == EMPTY:
                if free < 0:
                    free = slot
                else:
                    reused += 1
                table[free, 0] = key
                table[free, 1] = candidates[count]
                rows[i] = candidates[count]
                added[count] = key
                count += 1
                break
            slot = (slot + 1) & mask
    return count, reused


@numba.njit(cache=True)
def delete(table: np.ndarray, keys: np.ndarray) -> int:
    """Put a tombstone in the slot of each key present; the number deleted."""
    mask = table.shape[0] - 1
    deleted = 0
    for i in range(keys.shape[0]):
        slot = _slot_of(table, keys[i], mask)
        if slot >= 0:
            table[slot, 0] = TOMBSTONE
            deleted += 1
    return deleted


@numba.njit(cache=True)
def key_normals(keys: np.ndarray, dim: int, salt: int) -> np.ndarray:
    """(len(keys), dim) float32 standard normals, a function of each key and ``salt``: Box-Muller
    over two mixed hashes per value, each as a number in (0, 1) from its 53 top bits."""
    out = np.empty((keys.shape[0], dim), dtype=np.float32)
    for i in range(keys.shape[0]):
        base = keys[i] * (2 * dim) + salt
        for j in range(dim):
            u1 = (np.float64(mix64_one(base + j) >> np.uint64(11)) + 0.5) * 2.0**-53
            u2 = (np.float64(mix64_one(base + dim + j) >> np.uint64(11)) + 0.5) * 2.0**-53
            out[i, j] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out
