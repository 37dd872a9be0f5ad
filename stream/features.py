"""Raw event fields -> hashed ids and a sparse batch, vectorised over the whole batch.

Every example has the same fields: ``user_id``, ``item_id``, then the stream's feature fields.
Each field owns a region of one id space, so one embedding table and one FTRL state serve all
fields::

    id space (rows)   [ user_id | item_id | C1 ......... | I1 ... ] [ crosses (wide only) ]
    offsets            0         b_user    b_user+b_item   ...        field_rows
    per example        one id per field: ids[b, f] = offset[f] + hash(f, value) % buckets[f]

:class:`SparseBatch` holds ``ids`` (B, F): for single-valued fields the keys/values/offsets
layout of a jagged batch degenerates to this dense matrix, which indexes the embedding table directly.

Categorical values are hashed with a seeded FNV-1a over their UTF-32 code points, computed one
character position at a time across the whole (B, F) matrix (no per-feature Python loop), then
finalised with splitmix64: stable across processes and machines. Numeric values go to log
buckets (``floor(ln(v)^2)`` above 2, as in the Criteo competition winners' recipe; integers below)
and optionally also to dense inputs ``log1p(max(v, 0))``. Missing values are their own bucket.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from stream.errors import ConfigError

if TYPE_CHECKING:
    from producers.columns import CategoricalColumn, ColumnChunk

FieldKind = Literal["cat", "num"]
ID_FIELDS = ("user_id", "item_id")
DEFAULT_CAT_BUCKETS = 1 << 16
DEFAULT_NUM_BUCKETS = 512
COUNT_LEVELS = 32  # log2 levels of a count: 0, 1, 2-3, 4-7, ... (an int32 count needs 32)
DEFAULT_COUNT_ROWS = 1 << 22  # rows of a counted cross's table (FeatureSpec.count_rows)
CACHE_LIMIT = 1 << 20  # values cached per field before the cache starts over
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_strings(values: np.ndarray, seed: int) -> np.ndarray:
    """Seeded 64-bit hash of every string in a ``<U`` array (any shape)."""
    values = np.ascontiguousarray(values, dtype=np.str_)
    width = values.dtype.itemsize // 4
    codes = values.view(np.uint32).reshape(*values.shape, max(width, 1)).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(values.shape, _FNV_OFFSET ^ _splitmix64(np.uint64(seed)), dtype=np.uint64)
        for j in range(width):
            c = codes[..., j]
            # Padding NULs past a string's end leave the hash alone, so the hash of a value does
            # not depend on the longest string in its batch.
            h = np.where(c != 0, (h ^ c) * _FNV_PRIME, h)
        return _splitmix64(h)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind
    buckets: int


HISTORY_KINDS = ("user_clicks", "item_interactions")


@dataclass(frozen=True)
class FeatureSpec:
    """The fields of a stream and how each is hashed; saved with every model version."""

    fields: tuple[FieldSpec, ...]
    crosses: tuple[tuple[str, str], ...] = ()
    cross_buckets: int = 1 << 18
    dense_numeric: bool = True
    seed: int = 0
    # the user's last N clicked items, hashed like item_id (same embedding rows); 0 = none.
    # Set by sequence models (models.spec_for); the trainer keeps the histories (consumers/history.py).
    history_length: int = 0
    # "user_clicks": the user's clicked items (item rows); "item_interactions": the users shown the
    # item, user rows signed by whether they clicked (autorec).
    history_kind: str = "user_clicks"
    # categorical fields remembered with each clicked item (e.g. its category): a history entry
    # is then the sum of the item's row and these fields' rows, as DIN's goods_id + cate_id
    history_fields: tuple[str, ...] = ()
    # wide-only count features: for each key (a field, or a cross "A:B" among ``crosses``), how many
    # earlier examples the model learned from had the same value and how many of them were clicks,
    # log2 levels of both as one coordinate. The counts are model state (models/seen_counts.py).
    counts: tuple[str, ...] = ()
    # rows of a counted cross's table (a power of two): a cross's own 2**18 wide buckets collide
    # too often to tell "never seen" from "seen" (Frappe, lr: 0.9490 AUC at 2**22 rows, 0.9459 at 2**18)
    count_rows: int = DEFAULT_COUNT_ROWS
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"duplicate feature fields: {sorted(duplicates)}")
        for a, b in self.crosses:
            if a not in names or b not in names:
                raise ConfigError(f"--cross {a}:{b}: both fields must exist; fields: {', '.join(names)}")
        if self.history_kind not in HISTORY_KINDS:
            raise ConfigError(f"history_kind must be one of {HISTORY_KINDS}, not {self.history_kind!r}")
        kinds = {f.name: f.kind for f in self.fields}
        for name in self.history_fields:
            if kinds.get(name) != "cat" or name in ID_FIELDS:
                raise ConfigError(f"--history-field {name}: must be one of the stream's categorical fields: "
                                  + ", ".join(n for n, k in kinds.items() if k == "cat" and n not in ID_FIELDS))
        crossed = [f"{a}:{b}" for a, b in self.crosses]
        for key in self.counts:
            if key not in names and key not in crossed:
                hint = (f"; add --cross {key} first" if key.count(":") == 1 and all(p in names for p in key.split(":"))
                        else "")
                raise ConfigError(f"--count {key}: must be a field or a cross given with --cross{hint}; fields: "
                                  f"{', '.join(names)}" + (f"; crosses: {', '.join(crossed)}" if crossed else ""))
        if self.count_rows < 2 or self.count_rows & (self.count_rows - 1):
            raise ConfigError(f"count_rows must be a power of two, not {self.count_rows}")
        if len(set(self.counts)) != len(self.counts):
            raise ConfigError(f"--count repeats a key: {', '.join(self.counts)}")
        for f in self.fields:
            if f.buckets < 2:
                raise ConfigError(f"field {f.name}: buckets must be at least 2")
        sizes = np.array([f.buckets for f in self.fields], dtype=np.int64)
        object.__setattr__(self, "_offsets", np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets

    @property
    def field_rows(self) -> int:
        """Rows of the embedding tables (all fields)."""
        return int(sum(f.buckets for f in self.fields))

    @property
    def count_offset(self) -> int:
        """The first wide coordinate of the count features (after the fields and crosses)."""
        return self.field_rows + len(self.crosses) * self.cross_buckets

    @property
    def wide_rows(self) -> int:
        """Coordinates of the wide part: fields, crosses, count buckets, then one bias coordinate."""
        return self.count_offset + len(self.counts) * COUNT_LEVELS**2 + 1

    def count_keys(self) -> list[tuple[int, ...]]:
        """For each count key, the positions among the fields of what it counts: one field, or
        the two fields of a cross."""
        names = self.names
        return [(names.index(key),) if key in names else tuple(names.index(part) for part in key.split(":"))
                for key in self.counts]

    @property
    def bias_id(self) -> int:
        return self.wide_rows - 1

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.kind == "num")

    @property
    def dense_dim(self) -> int:
        return len(self.numeric_fields) if self.dense_numeric else 0

    def to_json(self) -> str:
        data = {"fields": [asdict(f) for f in self.fields], "crosses": [list(c) for c in self.crosses],
                "cross_buckets": self.cross_buckets, "dense_numeric": self.dense_numeric, "seed": self.seed}
        if self.history_length:
            data["history_length"] = self.history_length
        if self.history_kind != "user_clicks":
            data["history_kind"] = self.history_kind
        if self.history_fields:
            data["history_fields"] = list(self.history_fields)
        if self.counts:
            data["counts"] = list(self.counts)
            data["count_rows"] = self.count_rows
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        return cls(
            fields=tuple(FieldSpec(**f) for f in data["fields"]),
            crosses=tuple((a, b) for a, b in data["crosses"]),
            cross_buckets=data["cross_buckets"], dense_numeric=data["dense_numeric"], seed=data["seed"],
            history_length=data.get("history_length", 0),
            history_kind=data.get("history_kind", "user_clicks"),
            history_fields=tuple(data.get("history_fields", ())),
            counts=tuple(data.get("counts", ())), count_rows=data.get("count_rows", DEFAULT_COUNT_ROWS),
        )

    @classmethod
    def infer(cls, sample: Sequence[dict[str, Any]], *, cat_buckets: int = DEFAULT_CAT_BUCKETS,
              num_buckets: int = DEFAULT_NUM_BUCKETS, bucket_overrides: dict[str, int] | None = None,
              crosses: Sequence[tuple[str, str]] = (), cross_buckets: int = 1 << 18,
              dense_numeric: bool = True, seed: int = 0, counts: Sequence[str] = (),
              count_rows: int = DEFAULT_COUNT_ROWS) -> FeatureSpec:
        """Fields and kinds from sample feature dicts: strings are categorical, numbers numeric.

        A field that is null in every sample row is categorical. Fields keep first-seen order.
        """
        kinds: dict[str, FieldKind | None] = {}
        for features in sample:
            for name, value in features.items():
                if name in ID_FIELDS:
                    raise ConfigError(f"feature field {name!r} clashes with the event's own {name}")
                if kinds.get(name) is None:
                    kinds[name] = None if value is None else ("cat" if isinstance(value, str) else "num")
        overrides = dict(bucket_overrides or {})
        fields = [FieldSpec(n, "cat", overrides.pop(n, cat_buckets)) for n in ID_FIELDS]
        for name, kind in kinds.items():
            kind = kind or "cat"
            fields.append(FieldSpec(name, kind, overrides.pop(name, cat_buckets if kind == "cat" else num_buckets)))
        if overrides:
            raise ConfigError(f"--buckets names unknown fields: {', '.join(sorted(overrides))}")
        return cls(tuple(fields), tuple(crosses), cross_buckets, dense_numeric, seed, counts=tuple(counts),
                   count_rows=count_rows)


@dataclass
class SparseBatch:
    """One mini-batch: ``ids`` (B, F) field ids, ``cross_ids`` (B, C) wide-only ids,
    ``dense`` (B, D) float inputs, ``labels`` (B,) in {0, 1} (absent when scoring),
    ``history`` (B, L) the user's recently clicked items as item_id rows, -1 where empty
    (present when the spec has a history)."""

    ids: torch.Tensor
    cross_ids: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor | None = None
    history: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, start: int, stop: int) -> SparseBatch:
        """Examples ``start:stop`` (views, no copy)."""
        return SparseBatch(self.ids[start:stop], self.cross_ids[start:stop], self.dense[start:stop],
                           None if self.labels is None else self.labels[start:stop],
                           None if self.history is None else self.history[start:stop])

    @staticmethod
    def concat(first: SparseBatch, second: SparseBatch) -> SparseBatch:
        def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.cat([a, b])

        return SparseBatch(torch.cat([first.ids, second.ids]), torch.cat([first.cross_ids, second.cross_ids]),
                           torch.cat([first.dense, second.dense]), cat(first.labels, second.labels),
                           cat(first.history, second.history))

    def to(self, device: str | torch.device) -> SparseBatch:
        return SparseBatch(self.ids.to(device), self.cross_ids.to(device), self.dense.to(device),
                           None if self.labels is None else self.labels.to(device),
                           None if self.history is None else self.history.to(device))


class Featurizer:
    """Turns (user, item, feature dict) examples into a :class:`SparseBatch` for one :class:`FeatureSpec`.

    Categorical and numeric values are gathered separately: numbers go straight into a float
    array and are never turned into strings and parsed back (that round trip was half the cost).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        names = spec.names
        kinds = [f.kind for f in spec.fields]
        self._cat_idx = np.array([i for i, k in enumerate(kinds) if k == "cat"], dtype=np.int64)
        self._num_idx = np.array([i for i, k in enumerate(kinds) if k == "num"], dtype=np.int64)
        # value fields, i.e. without user_id and item_id (always the first two, both categorical)
        self._cat_names = tuple(names[i] for i in self._cat_idx if names[i] not in ID_FIELDS)
        self._num_names = tuple(names[i] for i in self._num_idx)
        self._cat_get = _getter(self._cat_names)
        self._num_get = _getter(self._num_names)
        buckets = np.array([f.buckets for f in spec.fields], dtype=np.uint64)
        self._cat_buckets = buckets[self._cat_idx]
        self._num_buckets = buckets[self._num_idx].astype(np.int64)
        self._cat_salt = (self._cat_idx.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        self._position = {name: i for i, name in enumerate(names)}
        # each history field's categorical column (its cache and hash) and its id offset
        categorical = {names[i]: j for j, i in enumerate(self._cat_idx)}
        self._history_columns = [(1, int(spec.offsets[1]))] + [
            (categorical[name], int(spec.offsets[self._position[name]])) for name in spec.history_fields]
        self._caches: list[dict[Any, int]] = [{} for _ in range(self._cat_idx.size)]

    def build(self, user_ids: Sequence[str], item_ids: Sequence[str], features: Sequence[dict[str, Any]],
              labels: Sequence[int] | np.ndarray | None = None,
              histories: Sequence[Sequence[str]] | None = None) -> SparseBatch:
        """``histories``: each example's recently clicked item ids (oldest first); only read when
        the spec has a history, and then missing means empty."""
        cat_get, num_get = self._cat_get, self._num_get
        cats = [[u, i, *cat_get(f)] for u, i, f in zip(user_ids, item_ids, features)]
        nums = [num_get(f) for f in features] if self._num_names else None
        n = len(cats)
        numbers = self._numeric_buckets(*self._numbers(nums, n, self._num_idx.size)) if nums is not None else None
        batch = self._assemble(self._categorical_ids(cats, n), numbers, labels)
        if self.spec.history_length:
            batch.history = self._history_ids(histories, len(cats))
        return batch

    def _history_ids(self, histories: Sequence[Sequence[Any]] | None, n: int) -> torch.Tensor:
        """Rows of each example's last L history entries, -1 where there are fewer: (n, L) for
        item ids alone; (n, L, 1 + K) with K ``history_fields``, an entry then being
        ``[item, value, ...]`` (consumers/history.py) or ``{"item_id": ..., field: value}`` (a
        request), a missing value hashed like a missing field. For ``item_interactions`` the entries are user ids,
        and a user shown the item who did not click (``~u``) is ``-(row + 2)``."""
        length = self.spec.history_length
        width = len(self._history_columns)
        out = np.full((n, length, width), -1, dtype=np.int64)
        if histories:
            recent = [list(h)[-length:] for h in histories]
            flat = [entry for h in recent for entry in h]
            if flat:
                rows = self._history_rows(flat)
                at = 0
                for k, h in enumerate(recent):
                    out[k, : len(h)] = rows[at : at + len(h)]
                    at += len(h)
        return torch.from_numpy(out if self.spec.history_fields else out[:, :, 0])

    def _history_rows(self, flat: list[Any]) -> np.ndarray:
        if self.spec.history_kind == "item_interactions":
            negative = np.array([entry.startswith("~") for entry in flat], dtype=bool)
            users = [entry[1:] if neg else entry for entry, neg in zip(flat, negative)]
            # hashed as the user_id column (same cache, same hash): the users' own rows
            rows = np.array(self._column_ids(0, users), dtype=np.int64) + self.spec.offsets[0]
            return np.where(negative, -rows - 2, rows)[:, None]
        fields = self.spec.history_fields
        if not fields:
            columns = [flat]
        else:
            columns = [[], *([] for _ in fields)]
            for entry in flat:
                # a missing value is None, exactly as in the example's own fields (same bucket)
                if isinstance(entry, str):
                    values = [entry, *(None for _ in fields)]
                elif isinstance(entry, dict):
                    values = [entry.get("item_id"), *(entry.get(f) for f in fields)]
                else:
                    values = [*entry, *(None for _ in range(1 + len(fields) - len(entry)))]
                for column, value in zip(columns, values):
                    column.append(value)
        # each column hashed as its field (same cache, same hash): the same rows as the fields
        return np.stack([np.array(self._column_ids(j, column), dtype=np.int64) + offset
                         for (j, offset), column in zip(self._history_columns, columns)], axis=1)

    def _categorical_ids(self, cats: list[list[Any]], n: int) -> np.ndarray:
        """(n, categorical fields) bucket ids."""
        if n == 0:
            return np.empty((0, self._cat_idx.size), dtype=np.int64)
        out = np.empty((self._cat_idx.size, n), dtype=np.int64)
        for j, column in enumerate(zip(*cats)):
            try:
                # every value cached (the usual case once a stream is warm): straight into the row,
                # without a Python list of ints in between (a sixth of this step)
                out[j] = np.fromiter(map(self._caches[j].get, column), np.int64, n)
            except TypeError:  # a value not cached yet: get gave None
                out[j] = self._column_ids(j, column)
        return out.T

    def _column_ids(self, j: int, column: Sequence[Any]) -> list[int]:
        """Bucket ids of one categorical column (the ``j``-th). Streams repeat values, so each
        field keeps a cache of value → bucket and only values it has not seen are hashed
        (vectorised); a lookup per value in C beats building and hashing the string matrix by
        about half."""
        cache = self._caches[j]
        found = list(map(cache.get, column))
        if None in found:
            if len(cache) > CACHE_LIMIT:
                cache.clear()
            missing = [k for k, v in enumerate(found) if v is None]
            values = [column[k] for k in missing]
            buckets = self._buckets(j, np.array(values, dtype=np.str_)).tolist()
            for k, value, bucket in zip(missing, values, buckets):
                cache[value] = bucket
                found[k] = bucket
        return found

    @staticmethod
    def _numbers(nums: list[Any], n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, missing) as float64 / bool arrays of shape (n, width)."""
        try:
            values = np.array(nums, dtype=np.float64).reshape(n, width)
        except (TypeError, ValueError):
            # Strings among the numbers (CSV input): parse them, with "" and "None" as missing.
            raw = np.array(nums, dtype=np.str_).reshape(n, width)
            blank = (raw == "None") | (raw == "")
            try:
                values = np.where(blank, "nan", raw).astype(np.float64)
            except ValueError as exc:
                raise ConfigError(f"a numeric field holds a non-number: {exc}") from None
        return values, np.isnan(values)

    def build_columns(self, chunk: ColumnChunk) -> SparseBatch:
        """The batch of a whole :class:`~producers.columns.ColumnChunk`: the same ids as
        :meth:`build` on the same rows, but each column's distinct values are hashed or bucketed
        once (plus one entry for "missing"), and each field is then one take, with no per-row
        Python work."""
        n = len(chunk)
        spec = self.spec
        names = spec.names
        by_field = np.empty((len(names), n), dtype=np.int64)  # field-major: each take writes one row
        for j, at in enumerate(self._cat_idx):
            name = names[at]
            column = (chunk.users if name == "user_id" else chunk.items if name == "item_id"
                      else chunk.categorical.get(name))
            by_field[at] = self._dictionary_ids(j, column, n)
        dense = np.zeros((spec.dense_dim, n), dtype=np.float32)
        for j, (at, name) in enumerate(zip(self._num_idx, self._num_names)):
            column = chunk.numeric.get(name)
            distinct = np.append(column.values, 0.0) if column is not None else np.zeros(1)
            missing = np.zeros(len(distinct), dtype=bool)
            missing[-1] = True  # the entry past the end stands for "missing"
            buckets, values = self._numeric_buckets(distinct, missing)
            codes = column.codes if column is not None else np.zeros(n, dtype=np.int64)
            by_field[at] = (buckets % self._num_buckets[j])[codes]
            if spec.dense_numeric:
                dense[j] = values[codes]
        by_field += spec.offsets[:, None]
        return self._batch(np.ascontiguousarray(by_field.T), np.ascontiguousarray(dense.T), chunk.labels)

    def _dictionary_ids(self, j: int, column: CategoricalColumn | None, n: int) -> np.ndarray:
        """Bucket ids of the ``j``-th categorical column from its dictionary; a missing value is
        hashed as the row path hashes ``None``."""
        if column is None:
            values, codes = np.empty(0, dtype=object), np.zeros(n, dtype=np.int64)
        else:
            values, codes = column.values, column.codes
        return self._buckets(j, np.append(np.asarray(values, dtype=np.str_), "None"))[codes]

    def _buckets(self, j: int, values: np.ndarray) -> np.ndarray:
        """The ``j``-th categorical field's bucket of each string in ``values`` (before its offset)."""
        with np.errstate(over="ignore"):
            h = _splitmix64(hash_strings(values, self.spec.seed) ^ self._cat_salt[j])
        return (h % self._cat_buckets[j]).astype(np.int64)

    @staticmethod
    def _numeric_buckets(values: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log bucket (before the field's modulo) and dense input of every number; missing: 0, 0."""
        values = np.where(missing, 0.0, values)
        with np.errstate(divide="ignore", invalid="ignore"):
            high = np.floor(np.log(np.maximum(values, 2.0)) ** 2) + 20
        low = np.floor(np.clip(values, -15, 2)) + 16
        bucket = np.where(missing, 0, np.where(values > 2, high, low)).astype(np.int64)
        return bucket, np.log1p(np.maximum(values, 0.0))

    def _assemble(self, cat_ids: np.ndarray, numbers: tuple[np.ndarray, np.ndarray] | None,
                  labels: Sequence[int] | np.ndarray | None) -> SparseBatch:
        """``numbers``: each numeric field's log bucket and dense input (:meth:`_numeric_buckets`)."""
        spec = self.spec
        n = cat_ids.shape[0]
        ids = np.empty((n, len(spec.fields)), dtype=np.int64)
        ids[:, self._cat_idx] = cat_ids
        dense = np.zeros((n, spec.dense_dim), dtype=np.float32)
        if numbers is not None:
            bucket, values = numbers
            ids[:, self._num_idx] = bucket % self._num_buckets
            if spec.dense_numeric:
                dense[:] = values
        ids += spec.offsets
        return self._batch(ids, dense, labels)

    def _batch(self, ids: np.ndarray, dense: np.ndarray, labels: Sequence[int] | np.ndarray | None) -> SparseBatch:
        """The batch of field ids (offsets added) and dense inputs, with the wide crosses."""
        spec = self.spec
        n = ids.shape[0]
        cross = np.empty((n, len(spec.crosses)), dtype=np.int64)
        base = spec.field_rows
        with np.errstate(over="ignore"):
            for k, (a, b) in enumerate(spec.crosses):
                mixed = _splitmix64(ids[:, self._position[a]].astype(np.uint64) * _GOLDEN
                                    ^ ids[:, self._position[b]].astype(np.uint64) ^ np.uint64(k + 1))
                cross[:, k] = base + k * spec.cross_buckets + (mixed % np.uint64(spec.cross_buckets)).astype(np.int64)
        label_tensor = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32))
        return SparseBatch(torch.from_numpy(ids), torch.from_numpy(cross), torch.from_numpy(dense), label_tensor)


def _getter(names: tuple[str, ...]) -> Any:
    """A function from a feature dict to the tuple of ``names``' values (None where absent)."""
    if not names:
        return lambda _features: ()
    fast = operator.itemgetter(*names)

    def get(features: dict[str, Any]) -> tuple[Any, ...]:
        try:
            values = fast(features)
        except KeyError:
            return tuple(features.get(name) for name in names)
        return values if len(names) > 1 else (values,)

    return get
