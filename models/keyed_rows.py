"""Which table row holds each id: keyed rows with admission, expiry and a row budget.

With fixed hashing an id's row is ``hash % buckets``: the long tail shares rows with the head,
and a row, once touched, is held forever. A keyed table gives each id that earns it a row of its
own, from a pool that grows, and takes rows back (as Monolith's and DeepRec's embedding tables do):

* **Keys.** The featurizer's ids of a keyed spec are 64-bit keys (each field's values hashed into
  2^40 of them, stream/feature_spec.py ``KEY_SPACE``), mapped to rows by a :class:`KeyIndex`.
* **Admission.** A key not yet held gets a row once it has been seen ``admit_after`` times (a
  counting filter: two hashed 8-bit counters per key, the smaller read, so a key is never
  counted short) or, at each batch it comes in, with probability ``admit_probability`` (a
  hash of the key and its count, so runs repeat). Until then it reads and trains its region's
  shared row ("not admitted yet"), learned like any other row.
* **Expiry and budget.** The clock is the number of examples learned (the same on every replay
  of a stream). A row idle for more than ``ttl`` examples, or for more than ``ttl_seconds`` of
  event time, is freed; with ``max_rows`` the least recently used rows are freed when an
  admission would pass the budget. A freed row is reset by the table that owns it before it is
  given to another key.
* **Event time.** Learning tells the table each batch's newest event time; the table keeps its
  watermark (the newest time so far: late events do not turn it back) and, every sixteenth of a
  ``ttl_seconds``, a mark (clock, watermark). Rows last used at or before a mark whose watermark
  is more than ``ttl_seconds`` old have been idle that long, so expiry by event time needs no
  per-row time: only a few marks, which are state like the clock.

Rows are handed out lowest free row first, then new ones at the end, and evictions are ordered
by (last use, row): the table is a function of the stream, so seeded runs repeat bit for bit
and a resumed worker continues exactly (the keys, last uses, filter and clock are state).
Row 0 is reserved: what a key no region row covers reads while scoring (it is never learned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from streamrec.models.key_index import KeyIndex
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.feature_spec import (
    COUNT_LEVELS,
    DEFAULT_CAT_BUCKETS,
    DEFAULT_CROSS_BUCKETS,
    FeatureSpec,
)
from streamrec.stream.hashing import mix64
from streamrec.stream.sparse_batch import SparseBatch

FREE = -1  # the key of a row no key holds
RESERVED = np.iinfo(np.int64).min + 2  # row 0's key: the row of ids nothing else covers
_FILTER_SALT = np.int64(0x5EED5EED5EED)
_NO_TIME = np.finfo(np.float64).min


@dataclass(frozen=True)
class TableConfig:
    """How a keyed table (a keyed spec's embedding and FTRL tables) admits, expires and bounds
    its rows. ``ttl`` is in examples learned and ``ttl_seconds`` in event time (0: never expire);
    ``max_rows`` bounds each table's rows (0: the rows fixed hashing's bytes hold, -1: no bound).
    Fixed hashing (a spec with ``keyed`` off) ignores these."""

    admit_after: int = 1
    # once the budget is reached a key must have been seen this often to take a row (evicting
    # another): a key seen once would push out a row that is read again
    admit_when_full: int = 2
    admit_probability: float = 0.0
    ttl: int = 0
    ttl_seconds: float = 0.0
    # 0: as many rows as fit in the bytes fixed hashing takes at its default rows per field
    # (DEFAULT_CAT_BUCKETS, and DEFAULT_CROSS_BUCKETS per cross); -1: no bound
    max_rows: int = 0
    filter_slots: int = 1 << 21  # counters of the admission filter (8 bits each)

    def __post_init__(self) -> None:
        if self.admit_after < 1:
            raise ConfigError(f"tables.admit_after must be at least 1, not {self.admit_after}")
        if self.admit_when_full < 1:
            raise ConfigError(f"tables.admit_when_full must be at least 1, not {self.admit_when_full}")
        if not 0.0 <= self.admit_probability <= 1.0:
            raise ConfigError(f"tables.admit_probability must be in [0, 1], not {self.admit_probability}")
        if self.ttl < 0:
            raise ConfigError(f"tables.ttl must be >= 0 (0: never expire), not {self.ttl}")
        if not 0.0 <= self.ttl_seconds < float("inf"):
            raise ConfigError(f"tables.ttl_seconds must be a finite number >= 0 (0: never expire), "
                              f"not {self.ttl_seconds}")
        if self.max_rows not in (0, -1) and self.max_rows < 1024:
            raise ConfigError(f"tables.max_rows must be 0 (fixed hashing's bytes), -1 (no bound) or at least 1024, "
                              f"not {self.max_rows}")
        if self.filter_slots < 1024 or self.filter_slots & (self.filter_slots - 1):
            raise ConfigError(f"tables.filter_slots must be a power of two >= 1024, not {self.filter_slots}")


class RowOwner(Protocol):
    """The table whose rows a :class:`KeyedRows` hands out: it grows its tensors and resets rows."""

    def grow_rows(self, rows: int) -> None: ...

    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """Rows given to ``keys`` (FREE: freed) start again, optimiser state included."""

    def rows_loaded(self, rows: int) -> None:
        """Its tensors were replaced by a version's, of ``rows`` rows: its per-row bookkeeping
        (rows changed since the last delta, scratch space) starts again at that size."""


# what a row costs beyond its own tensors: its key and last use, and the index's slots (16 bytes
# each, at a load that may be as low as 1/5 just after the index was rebuilt)
KEYED_ROW_OVERHEAD = 8 + 8 + 80


def _hashed_field_rows(spec: FeatureSpec) -> int:
    """The rows fixed hashing gives the fields at the default buckets (what ``max_rows`` 0 matches)."""
    return sum(DEFAULT_CAT_BUCKETS if f.kind == "cat" else f.buckets for f in spec.fields)


def _budget(config: TableConfig, hashed_rows: int, row_bytes: int) -> int:
    """The row budget: ``max_rows``, none for -1, and for 0 the rows that fit in fixed hashing's bytes."""
    if config.max_rows:
        return max(config.max_rows, 0)
    return max(1024, hashed_rows * row_bytes // (row_bytes + KEYED_ROW_OVERHEAD))


def embedding_layout(spec: FeatureSpec, config: TableConfig, dim: int) -> tuple[TableConfig, np.ndarray, int, int]:
    """A keyed embedding table's regions (one per field: its ids are field ids only), the first
    always-held key (none) and its row budget (weights, Adagrad state, count, dirty flag per row)."""
    return config, spec.offsets.copy(), spec.field_rows, _budget(config, _hashed_field_rows(spec), 4 * dim + 9)


def wide_layout(spec: FeatureSpec, config: TableConfig) -> tuple[TableConfig, np.ndarray, int, int]:
    """A keyed FTRL table's regions (the fields, then the crosses; counts and the bias are always
    held from ``count_offset`` on) and its row budget (z, n and a dirty flag per row)."""
    hashed = (_hashed_field_rows(spec) + len(spec.crosses) * DEFAULT_CROSS_BUCKETS
              + len(spec.counts) * COUNT_LEVELS**2 + 1)
    return (config, np.concatenate([spec.offsets, spec.cross_offsets]), spec.count_offset,
            _budget(config, hashed, 17))


def count_layout(spec: FeatureSpec, config: TableConfig) -> tuple[TableConfig, np.ndarray, int, int]:
    """A keyed count table's regions (one per count key, its index in the top bits of its keys,
    models/seen_counts.py), nothing always held, and its row budget (count, clicks and a dirty flag
    per row, against ``count_rows`` hashed rows per key). Every value is counted from its first
    sighting: admission after N sightings would count N - 1 of them short."""
    keys = len(spec.counts)
    regions = np.arange(keys, dtype=np.int64) << np.int64(56)
    counted = dataclasses.replace(config, admit_after=1, admit_probability=0.0)
    return counted, regions, keys << 56, _budget(config, keys * spec.count_rows, 9)


def region_names(spec: FeatureSpec, group: str) -> list[str]:
    """The names of a keyed table's regions (:func:`embedding_layout`, :func:`wide_layout`,
    :func:`count_layout`), then what is always held (the wide part's count levels and bias)."""
    names = list(spec.names)
    if group == "seen":
        return list(spec.counts) + ["(none)"]
    return names + ["(all)"] if group == "embedding" else names + [f"{a}:{b}" for a, b in spec.crosses] + ["(counts)"]


def table_summary(model: Any) -> dict[str, dict[str, Any]]:
    """Each keyed table of ``model``: rows held, keys admitted and rows evicted so far, bytes
    (its tensors, index, keys and filter) and the rows held per field (and cross); {} when the
    model's tables are hashed. What the evaluate report, /metrics, the dashboard and each
    version's metadata show."""
    out = {}
    tensors = model.tensors()
    for group, table in model.keyed_tables().items():
        owner_bytes = sum(t.numel() * t.element_size() for name, t in tensors.items()
                          if name.startswith(f"{group}.") and not name.startswith(f"{group}.table.")
                          and name not in (f"{group}.keys", f"{group}.last_used"))
        held = table.held_by_region()
        fields = {name: int(rows) for name, rows in zip(region_names(model.spec, group), held) if rows}
        out[group] = {"rows": table.live_rows, "admitted": table.admitted, "not_admitted": table.not_admitted,
                      "evicted": table.evicted,
                      "capacity": table.capacity, "bytes": int(owner_bytes + table.nbytes()), "fields": fields}
    return out


def combined_summary(summaries: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The :func:`table_summary` of a model whose tables are split across ranks, from each rank's
    (counts added up; a region's shared row is counted once per rank that holds one)."""
    out: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for group, table in summary.items():
            whole = out.setdefault(group, {"fields": {}})
            for name, value in table.items():
                if name == "fields":
                    for field, rows in value.items():
                        whole["fields"][field] = whole["fields"].get(field, 0) + rows
                else:
                    whole[name] = whole.get(name, 0) + value
    return out


def observe_event_time(tables: Iterable[KeyedRows], batch: SparseBatch) -> None:
    """Tell the tables that expire rows by event time the newest time of ``batch``, before it is
    learned; a :class:`ConfigError` if they need times and the batch carries none."""
    timed = [table for table in tables if table.config.ttl_seconds]
    if not timed:
        return
    if batch.event_time is None:
        raise ConfigError("tables.ttl_seconds expires rows by event time, but these examples carry none "
                          "(give each example its time, or expire by examples learned with tables.ttl)")
    if len(batch.event_time):
        newest = float(batch.event_time.max())
        if newest != newest or abs(newest) == float("inf"):
            raise ConfigError(f"an event time of {newest} cannot order rows by time (tables.ttl_seconds)")
        for table in timed:
            table.observe_time(newest)


class KeyedRows:
    """The key -> row map of one table, with admission, expiry and a row budget (module docstring).

    ``regions``: the first key of each region whose unadmitted keys share a row (a field, a
    cross); keys from ``always_from`` on (counts and the bias: few, and always used) are admitted
    at once. Without ``shared_rows`` (count tables: a shared count would count every waiting
    value as one) a key not admitted reads row 0, which the owner keeps as "nothing learned"."""

    def __init__(self, config: TableConfig, regions: np.ndarray, always_from: int, owner: RowOwner,
                 capacity: int = 1024, max_rows: int | None = None, shared_rows: bool = True) -> None:
        self.config = config
        self.shared_rows = shared_rows
        # the row budget (0: none); the layouts resolve ``config.max_rows`` 0 to fixed hashing's bytes
        self.max_rows = max(config.max_rows, 0) if max_rows is None else max_rows
        self.regions = np.asarray(regions, dtype=np.int64)
        self.always_from = int(always_from)
        self.owner = owner
        self.index = KeyIndex()
        self.keys = np.full(capacity, FREE, dtype=np.int64)
        self.keys[0] = RESERVED
        self.last_used = np.zeros(capacity, dtype=np.int64)
        # allocated when first counted: with admit_after 1 and no probability nothing is counted
        self.filter = np.zeros(0, dtype=np.uint8)
        self.clock = 0
        self.next_row = 1
        self._free = np.empty(0, dtype=np.int64)  # freed rows below next_row, ascending
        self.evicted = 0   # rows freed (expired or over budget), over the table's life
        self.admitted = 0  # keys given a row of their own
        self.not_admitted = 0  # sightings of keys that read a shared row (or none) for want of one
        self._next_expiry = 0
        self.watermark = -np.inf  # the newest event time learned from
        self._marks = np.empty((0, 2), dtype=np.float64)  # (clock, watermark), oldest first
        self._next_time_check = -np.inf

    # ---------------------------------------------------------------- reading

    @property
    def capacity(self) -> int:
        return len(self.keys)

    @property
    def live_rows(self) -> int:
        return len(self.index)

    def shared_keys(self, keys: np.ndarray) -> np.ndarray:
        """The key of the shared "not admitted yet" row of each key's region: -(region + 2)."""
        return -(np.searchsorted(self.regions, keys, side="right") - 1) - 2

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Scoring: each key's row, its region's shared row if it has none, row 0 if neither is
        held. Nothing changes."""
        flat = keys.reshape(-1).numpy()
        rows = self.index.get(flat)
        missing = rows < 0
        if not self.shared_rows:
            rows[missing] = 0
        elif missing.any():
            rows[missing] = np.maximum(self.index.get(self.shared_keys(flat[missing])), 0)
        return torch.from_numpy(rows).view(keys.shape)

    # ---------------------------------------------------------------- learning

    def learn_rows(self, keys: torch.Tensor, examples: int) -> torch.Tensor:
        """Learning: the rows ``keys`` (any shape) train, after admitting what has earned a row;
        the clock moves on by ``examples`` and every row used is marked used now."""
        self.clock += examples
        flat = np.ascontiguousarray(keys.reshape(-1).numpy(), dtype=np.int64)
        # last uses order evictions and expiry; what this batch reads is marked before anything
        # is evicted for it
        rows, absent = self.index.get_and_touch(flat, self.last_used, self.clock)
        if absent:
            if self.config.admit_after == 1 and (not self.max_rows or self.live_rows + absent <= self.max_rows):
                self._admit_all(flat, rows, absent)  # room for every key at its first sighting
            else:
                missing = rows < 0
                admitted = self._admit(flat[missing])
                rows[missing] = admitted
                self.last_used[admitted] = self.clock
        if self.config.ttl and self.clock >= self._next_expiry:
            self._expire()
        if self.config.ttl_seconds and examples:
            self._expire_by_time()
        return torch.from_numpy(rows).view(keys.shape)

    def observe_time(self, newest: float) -> None:
        """The newest event time of the batch about to be learned (the watermark never goes back)."""
        if newest > self.watermark:
            self.watermark = float(newest)

    def _admit_all(self, keys: np.ndarray, rows: np.ndarray, absent: int) -> None:
        """Give every key that has no row one, in the order they first occur (fewer than ``absent``
        when keys repeat): the lowest freed rows, then new ones."""
        reused = min(absent, len(self._free))
        fresh = np.arange(self.next_row, self.next_row + absent - reused)
        if len(fresh) and fresh[-1] >= self.capacity:
            self._grow(int(fresh[-1]) + 1)
        candidates = np.concatenate([self._free[:reused], fresh])
        added = self.index.add_absent(keys, rows, candidates)
        count = len(added)
        new_rows = candidates[:count]  # handed out in order: freed rows first
        taken = min(count, reused)
        self._free = self._free[taken:]
        self.next_row += count - taken
        self.keys[new_rows] = added
        self.last_used[new_rows] = self.clock
        self.owner.reset_rows(torch.from_numpy(new_rows), torch.from_numpy(added))
        self.admitted += count

    def _admit(self, keys: np.ndarray) -> np.ndarray:
        """Rows for keys not held: their own if admitted now, else their region's shared row."""
        distinct, inverse, occurrences = np.unique(keys, return_inverse=True, return_counts=True)
        admitted = distinct >= self.always_from
        counted = ~admitted
        needed = self.config.admit_after
        if self.max_rows and self.live_rows + len(distinct) > self.max_rows:
            needed = max(needed, self.config.admit_when_full)
        if needed == 1:  # the first sighting earns a row: nothing to count
            admitted[:] = True
        elif counted.any():
            seen = self._count(distinct[counted], occurrences[counted])
            earned = seen >= needed
            if self.config.admit_probability > 0:
                draw = (mix64(distinct[counted] ^ (seen.astype(np.int64) << 40)) >> np.uint64(11)) * 2.0**-53
                earned |= draw < self.config.admit_probability
            admitted[counted] = earned
        own = distinct[admitted]
        shared = self._shared_rows_for(distinct[~admitted])
        rows = np.empty(len(distinct), dtype=np.int64)
        if len(own):
            given = self._allocate(len(own) + len(shared), len(own))
            if len(given) < len(own):  # the budget holds fewer: the rest wait in the shared rows
                admitted[np.flatnonzero(admitted)[len(given):]] = False
                own = own[:len(given)]
                shared = self._shared_rows_for(distinct[~admitted])
            self._hold(own, given)
            rows[admitted] = given
            self.admitted += len(own)
        self.not_admitted += int(occurrences[~admitted].sum())
        if len(shared):
            held = self.index.get(shared)
            new = shared[held < 0]
            if len(new):
                self._hold(new, self._allocate(len(new), len(new), bounded=False))
            rows[~admitted] = self.index.get(self.shared_keys(distinct[~admitted]))
        elif not self.shared_rows:
            rows[~admitted] = 0
        return rows[inverse]

    def _shared_rows_for(self, waiting: np.ndarray) -> np.ndarray:
        """The keys of the shared rows the ``waiting`` keys read (none without shared rows)."""
        return np.unique(self.shared_keys(waiting)) if self.shared_rows else waiting[:0]

    def _count(self, keys: np.ndarray, occurrences: np.ndarray) -> np.ndarray:
        """Add each key's occurrences to the filter; each key's count so far (at least its own)."""
        if not len(self.filter):
            self.filter = np.zeros(self.config.filter_slots, dtype=np.uint8)
        h = mix64(keys ^ _FILTER_SALT)
        mask = np.uint64(len(self.filter) - 1)
        first, second = (h & mask).astype(np.int64), ((h >> np.uint64(32)) & mask).astype(np.int64)
        seen = np.minimum(self.filter[first], self.filter[second]).astype(np.int64) + occurrences
        capped = np.minimum(seen, 255).astype(np.uint8)
        # two keys of a batch may share a counter: the larger count stays (never counted short)
        np.maximum.at(self.filter, first, capped)
        np.maximum.at(self.filter, second, capped)
        return seen

    def _hold(self, keys: np.ndarray, rows: np.ndarray) -> None:
        self.index.insert(keys, rows)
        self.keys[rows] = keys
        self.last_used[rows] = self.clock
        self.owner.reset_rows(torch.from_numpy(rows), torch.from_numpy(keys))

    def _allocate(self, needed: int, wanted: int, bounded: bool = True) -> np.ndarray:
        """``wanted`` free rows (fewer if the budget cannot make room for ``needed``): the lowest
        freed rows, then new ones; over the budget, the least recently used rows are freed first.
        The shared rows (one per region) are not ``bounded``: every key must have a row to read."""
        budget = self.max_rows
        if bounded and budget and self.live_rows + needed > budget:
            # free a sixteenth more than needed, so a full table is not searched on every batch
            self._evict(self.live_rows + needed - budget + budget // 16)
            wanted = min(wanted, max(0, budget - self.live_rows - (needed - wanted)))
        take = min(wanted, len(self._free))
        rows = self._free[:take]
        self._free = self._free[take:]
        fresh = wanted - take
        if fresh:
            if self.next_row + fresh > self.capacity:
                self._grow(self.next_row + fresh)
            rows = np.concatenate([rows, np.arange(self.next_row, self.next_row + fresh)])
            self.next_row += fresh
        return rows

    def _grow(self, rows: int) -> None:
        capacity = max(2 * self.capacity, 1 << int(rows - 1).bit_length())
        if self.max_rows:
            capacity = min(capacity, max(rows, self.max_rows + 1))
        extra = capacity - self.capacity
        self.keys = np.concatenate([self.keys, np.full(extra, FREE, dtype=np.int64)])
        self.last_used = np.concatenate([self.last_used, np.zeros(extra, dtype=np.int64)])
        self.owner.grow_rows(capacity)

    def _expire(self) -> None:
        """Free rows idle for more than ``ttl`` examples; checked every eighth of a ttl."""
        self._next_expiry = self.clock + max(1, self.config.ttl // 8)
        held = self._own_rows()
        self._free_rows(held[self.last_used[held] < self.clock - self.config.ttl])

    def _expire_by_time(self) -> None:
        """Mark (clock, watermark) every sixteenth of a ``ttl_seconds``; every eighth, free the rows
        last used at or before the newest mark more than ``ttl_seconds`` behind the watermark."""
        ttl = self.config.ttl_seconds
        if not np.isfinite(self.watermark):
            return
        if not len(self._marks) or self.watermark - self._marks[-1, 1] >= ttl / 16:
            self._marks = np.concatenate([self._marks, [[self.clock, self.watermark]]])
        if self.watermark < self._next_time_check:
            return
        self._next_time_check = self.watermark + ttl / 8
        old = int(np.searchsorted(self._marks[:, 1], self.watermark - ttl, side="left"))
        if not old:
            return
        cutoff = int(self._marks[old - 1, 0])
        self._marks = self._marks[old:]  # rows used at or before those marks are freed now
        held = self._own_rows()
        self._free_rows(held[self.last_used[held] <= cutoff])

    def _own_rows(self) -> np.ndarray:
        """Rows held by a key of their own (not the shared and reserved rows, which stay)."""
        return np.flatnonzero(self.keys[: self.next_row] >= 0)

    def _evict(self, count: int) -> None:
        """Free the ``count`` least recently used rows not used by the current batch."""
        held = self._own_rows()
        held = held[self.last_used[held] < self.clock]
        if count < len(held):
            # the ``count`` smallest (last use, row): distinct keys, so the set is exact (no full sort)
            order = (self.last_used[held] << np.int64(24)) | held if len(self.keys) < 1 << 24 else None
            if order is None:
                held = held[np.lexsort((held, self.last_used[held]))[:count]]
            else:
                held = held[np.argpartition(order, count)[:count]]
        self._free_rows(held)

    def _free_rows(self, rows: np.ndarray) -> None:
        self.hand_over(rows)
        self.evicted += len(rows)

    def hand_over(self, rows: np.ndarray) -> None:
        """Free ``rows`` without counting them evicted: their keys live elsewhere now (another
        rank's shard of the table, models/sharded.py)."""
        if not len(rows):
            return
        self.index.delete(self.keys[rows])
        self.keys[rows] = FREE
        self.owner.reset_rows(torch.from_numpy(rows), torch.full((len(rows),), FREE, dtype=torch.int64))
        self._free = np.union1d(self._free, rows)

    # ---------------------------------------------------------------- state

    def row_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Each row's key and last use, saved with the rows (``<prefix>.keys``, ``<prefix>.last_used``)."""
        return {f"{prefix}.keys": torch.from_numpy(self.keys), f"{prefix}.last_used": torch.from_numpy(self.last_used)}

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Everything of the table a version holds: :meth:`row_tensors` and :meth:`state`."""
        return {**self.row_tensors(prefix), **self.state(prefix)}

    def row_group(self, prefix: str, names: tuple[str, ...]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The owner's row group (its tensors ``names``) as a keyed table writes it: every held row,
        with its key and last use."""
        return torch.from_numpy(self.keys != FREE), (*names, *self.row_tensors(prefix))

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """What learning needs beyond the rows (``<prefix>.table.*``, left out of deltas): the
        admission filter, the clock and the counters, and the event-time watermark and marks."""
        # "no time yet" (-inf) is written as the lowest float: every stored tensor is finite (the gate checks)
        times = np.maximum(np.concatenate([[self.watermark, self._next_time_check], self._marks.reshape(-1)]), _NO_TIME)
        return {f"{prefix}.table.filter": torch.from_numpy(self.filter),
                f"{prefix}.table.clock": torch.tensor([self.clock, self.next_row, self.evicted, self.admitted,
                                                       self._next_expiry, self.not_admitted], dtype=torch.int64),
                f"{prefix}.table.time": torch.from_numpy(times)}

    def load(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        """Take the keys, last uses and learning state of ``tensors`` (a version) and rebuild the index."""
        self.keys = tensors[f"{prefix}.keys"].numpy().astype(np.int64, copy=True)
        self.last_used = tensors[f"{prefix}.last_used"].numpy().astype(np.int64, copy=True)
        if f"{prefix}.table.filter" in tensors:
            self.filter = tensors[f"{prefix}.table.filter"].numpy().astype(np.uint8, copy=True)
            values = tensors[f"{prefix}.table.clock"].tolist()
            if len(values) not in (5, 6):
                raise ModelError(f"stored {prefix}.table.clock has {len(values)} values, not 6")
            # versions from before the count of sightings not admitted have five
            self.clock, self.next_row, self.evicted, self.admitted, self._next_expiry = (int(v) for v in values[:5])
            self.not_admitted = int(values[5]) if len(values) == 6 else 0
        if f"{prefix}.table.time" in tensors:  # versions from before event-time expiry have none
            times = tensors[f"{prefix}.table.time"].numpy().astype(np.float64)
            if times.ndim != 1 or len(times) < 2 or len(times) % 2:
                raise ModelError(f"stored {prefix}.table.time has {tuple(times.shape)} values, not 2 + 2 per mark")
            times = np.where(times <= _NO_TIME, -np.inf, times)
            self.watermark, self._next_time_check = float(times[0]), float(times[1])
            self._marks = times[2:].reshape(-1, 2).copy()
        self.reindex()
        self.owner.rows_loaded(self.capacity)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows (a version or a delta about to be written in)."""
        if rows > self.capacity:
            self._grow(rows)

    def reindex(self) -> None:
        """Rebuild the index and the free rows from ``keys`` (after a load)."""
        self.index = KeyIndex(2 * self.capacity)
        held = np.flatnonzero(self.keys != FREE)
        held = held[held > 0]
        self.index.insert(self.keys[held], held)
        self.next_row = max(self.next_row, int(held.max()) + 1 if len(held) else 1)
        self._free = np.flatnonzero(self.keys[1: self.next_row] == FREE) + 1

    def rekeyed(self, rows: np.ndarray, old_keys: np.ndarray) -> None:
        """``rows`` were written with new keys (a delta): the old keys leave the index, the new enter."""
        self.index.delete(old_keys[old_keys != FREE])
        new = self.keys[rows]
        held = new != FREE
        self.index.insert(new[held], rows[held])
        self.next_row = max(self.next_row, int(rows.max()) + 1 if len(rows) else 1)

    def held_by_region(self) -> np.ndarray:
        """Rows held by a key of their own in each region, then those of the always-held keys."""
        own = self.keys[self.keys >= 0]
        region = np.where(own >= self.always_from, len(self.regions), np.searchsorted(self.regions, own, side="right") - 1)
        return np.bincount(region, minlength=len(self.regions) + 1)

    def nbytes(self) -> int:
        """Bytes of the index, the keys, the last uses and the filter (the table's own rows apart)."""
        return self.index.nbytes() + self.keys.nbytes + self.last_used.nbytes + self.filter.nbytes
