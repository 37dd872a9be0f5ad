"""Raw event fields -> hashed ids and a :class:`~streamrec.stream.sparse_batch.SparseBatch`, vectorised
over the whole batch.

Per example, one id per field: ``ids[b, f] = offset[f] + hash(f, value) % buckets[f]``
(:class:`~streamrec.stream.feature_spec.FeatureSpec` holds the offsets). Categorical values are
hashed with a seeded FNV-1a over their UTF-32 code points, one character position at a time
across the whole matrix, then finalised with splitmix64: stable across processes and machines.
Numeric values go to log buckets (``floor(ln(v)^2)`` above 2, as in the Criteo competition
winners' recipe; integers below) and optionally to dense inputs ``log1p(max(v, 0))``. Missing
values are their own bucket.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamrec.stream.columns import CategoricalColumn, ColumnChunk
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import ID_FIELDS, FeatureSpec
from streamrec.stream.hashing import GOLDEN, splitmix64
from streamrec.stream.sparse_batch import SparseBatch

CACHE_LIMIT = 1 << 20  # values cached per field before the cache starts over
CACHED_VALUE_CHARS = 256  # longer values are hashed each time, never cached
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_ARRAY_WIDTH = 64  # values up to this long share one fixed-width array
_FEW = 16  # fewer long strings of one length than this: hashed in a Python loop
_MASK64 = (1 << 64) - 1


def _fnv1a(text: str, start: int) -> int:
    """FNV-1a over the UTF-32 code points of ``text``, skipping NULs (what the array path computes)."""
    h = start
    prime = int(_FNV_PRIME)
    for code in map(ord, text):
        if code:
            h = ((h ^ code) * prime) & _MASK64
    return h


def hash_strings(values: np.ndarray | Sequence[Any], seed: int) -> np.ndarray:
    """Seeded 64-bit hash of every string in ``values`` (a ``<U`` array of any shape, or a sequence of
    values, each hashed as ``str(value)``).

    Values up to ``_ARRAY_WIDTH`` characters are hashed together in one fixed-width array (a
    column at a time across all of them); longer ones in groups of one length, each as wide as its
    strings. So a long value costs its own length, never its length times the values beside it."""
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    shape = array.shape
    flat = [v if type(v) is str else str(v) for v in array.reshape(-1).tolist()]
    lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
    out = np.empty(len(flat), dtype=np.uint64)
    with np.errstate(over="ignore"):
        start = _FNV_OFFSET ^ splitmix64(np.uint64(seed))
        short = np.flatnonzero(lengths <= _ARRAY_WIDTH)
        if len(short) == len(flat):
            out[:] = _fnv1a_array(np.array(flat, dtype=np.str_), start)
        else:
            if len(short):
                out[short] = _fnv1a_array(np.array([flat[k] for k in short], dtype=np.str_), start)
            by_length: dict[int, list[int]] = {}
            for k in np.flatnonzero(lengths > _ARRAY_WIDTH).tolist():
                by_length.setdefault(int(lengths[k]), []).append(k)
            for width, positions in by_length.items():
                if len(positions) < _FEW:
                    # a few long strings: a loop over their characters beats one array op per position
                    out[positions] = np.array([_fnv1a(flat[k], int(start)) for k in positions], dtype=np.uint64)
                else:
                    out[positions] = _fnv1a_array(np.array([flat[k] for k in positions], dtype=f"<U{width}"), start)
        return splitmix64(out).reshape(shape)


def _fnv1a_array(strings: np.ndarray, start: np.uint64) -> np.ndarray:
    """FNV-1a of each string of a 1-D ``<U`` array, one character position at a time across all of
    them. Padding NULs past a string's end leave its hash alone, so a value's hash does not depend
    on the longest string beside it."""
    width = strings.dtype.itemsize // 4
    h = np.full(strings.shape, start, dtype=np.uint64)
    if width == 0 or strings.size == 0:
        return h
    codes = strings.view(np.uint32).reshape(strings.size, width).astype(np.uint64)
    for j in range(width):
        c = codes[:, j]
        h = np.where(c != 0, (h ^ c) * _FNV_PRIME, h)
    return h


def hash_arrow_strings(strings: Any, seed: int) -> np.ndarray | None:
    """:func:`hash_strings` of an Arrow string array without nulls, from its buffers: for ASCII
    values code points are bytes. None when a value is not ASCII or longer than ``_ARRAY_WIDTH``
    (the caller hashes those as Python strings)."""
    n = len(strings)
    kind = str(strings.type)  # pyarrow is not imported here: only its arrays come in
    if n == 0 or strings.null_count or kind not in ("string", "large_string"):
        return None if n else np.empty(0, dtype=np.uint64)
    buffers = strings.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if kind == "large_string" else np.int32)
    offsets = offsets[strings.offset:strings.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    width = int(lengths.max())
    if width > _ARRAY_WIDTH:
        return None
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(1, dtype=np.uint8)
    if width == 0:
        codes = np.zeros((n, 0), dtype=np.uint64)
    else:
        at = offsets[:-1, None] + np.arange(width)[None, :]
        inside = np.arange(width)[None, :] < lengths[:, None]
        codes = np.where(inside, data[np.minimum(at, len(data) - 1)], 0)
        if codes.max(initial=0) >= 0x80:
            return None
        codes = codes.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(n, _FNV_OFFSET ^ splitmix64(np.uint64(seed)), dtype=np.uint64)
        for j in range(width):
            c = codes[:, j]
            h = np.where(c != 0, (h ^ c) * _FNV_PRIME, h)
        return splitmix64(h)


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
        self._cat_salt = (self._cat_idx.astype(np.uint64) + np.uint64(1)) * GOLDEN
        self._position = {name: i for i, name in enumerate(names)}
        # each history field's categorical column (its cache and hash) and its id offset
        categorical = {names[i]: j for j, i in enumerate(self._cat_idx)}
        self._history_columns = [(1, int(spec.offsets[1]))] + [
            (categorical[name], int(spec.offsets[self._position[name]])) for name in spec.history_fields]
        self._caches: list[dict[Any, int]] = [{} for _ in range(self._cat_idx.size)]

    def build(self, user_ids: Sequence[str], item_ids: Sequence[str], features: Sequence[dict[str, Any]],
              labels: Sequence[int] | np.ndarray | None = None,
              histories: Sequence[Sequence[str]] | None = None,
              event_times: Sequence[float] | np.ndarray | None = None) -> SparseBatch:
        """``histories``: each example's recently clicked item ids (oldest first); only read when
        the spec has a history, and then missing means empty. ``event_times``: each example's
        event time (keyed tables expire rows by it, models/keyed_rows.py)."""
        cat_get, num_get = self._cat_get, self._num_get
        cats = [[u, i, *cat_get(f)] for u, i, f in zip(user_ids, item_ids, features)]
        nums = [num_get(f) for f in features] if self._num_names else None
        n = len(cats)
        numbers = self._numeric_buckets(*self._numbers(nums, n, self._num_idx.size)) if nums is not None else None
        batch = self._assemble(self._categorical_ids(cats, n), numbers, labels)
        if self.spec.history_length:
            batch.history = self._history_ids(histories, len(cats))
        if event_times is not None:
            batch.event_time = torch.as_tensor(np.asarray(event_times, dtype=np.float64))
        return batch

    def _history_ids(self, histories: Sequence[Sequence[Any]] | None, n: int) -> torch.Tensor:
        """Rows of each example's last L history entries, -1 where there are fewer: (n, L) for
        item ids alone; (n, L, 1 + K) with K ``history_fields``, an entry then being
        ``[item, value, ...]`` (stream/behaviour_history.py) or ``{"item_id": ..., field: value}`` (a
        request), a missing value hashed like a missing field. For ``item_interactions`` the entries are user ids,
        and a user shown the item who did not click (``~u``) is ``-(row + 2)``."""
        length = self.spec.history_length
        width = len(self._history_columns)
        if isinstance(histories, np.ndarray):  # already rows (BehaviourHistory.rows_before_learning)
            if histories.shape != (n, length, width):
                raise ValueError(f"encoded histories of shape {histories.shape}, expected {(n, length, width)}")
            return torch.from_numpy(histories if self.spec.history_fields else histories[:, :, 0])
        out = np.full((n, length, width), -1, dtype=np.int64)
        if histories:
            recent = [h if len(h) <= length else list(h)[-length:] for h in histories]
            flat = [entry for h in recent for entry in h]
            if flat:
                # entries fill each example's first len(h) slots, in the order flat lists them
                sizes = np.fromiter(map(len, recent), np.int64, len(recent))
                out[np.arange(length) < sizes[:, None]] = self.history_rows(flat)
        return torch.from_numpy(out if self.spec.history_fields else out[:, :, 0])

    def history_rows(self, flat: list[Any]) -> np.ndarray:
        """The rows (n, 1 + K) of history entries, as the history of a batch holds them: what a
        BehaviourHistory keeps encoded (stream/behaviour_history.py ``attach_encoder``)."""
        if self.spec.history_kind == "item_interactions":
            negative = np.array([entry.startswith("~") for entry in flat], dtype=bool)
            users = [entry[1:] if neg else entry for entry, neg in zip(flat, negative)]
            # hashed as the user_id column (same cache, same hash): the users' own rows
            rows = np.array(self._column_ids(0, users), dtype=np.int64) + self.spec.offsets[0]
            return np.where(negative, -rows - 2, rows)[:, None]
        fields = self.spec.history_fields
        width = 1 + len(fields)
        if not fields:
            columns = [flat]
        elif set(map(type, flat)) == {list} and set(map(len, flat)) == {width}:
            # the usual case, entries kept by the trainer ([item, value, ...]): transposed in C
            columns = [list(column) for column in zip(*flat)]
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
        return np.stack([self._column_array(j, column) + offset
                         for (j, offset), column in zip(self._history_columns, columns)], axis=1)

    def _column_array(self, j: int, column: Sequence[Any]) -> np.ndarray:
        """:meth:`_column_ids` as an array. When every value is cached (the usual case once a
        stream is warm) straight from the cache, without a Python list of ints in between."""
        try:
            return np.fromiter(map(self._caches[j].get, column), np.int64, len(column))
        except TypeError:  # a value not cached yet: get gave None
            return np.array(self._column_ids(j, column), dtype=np.int64)

    def _categorical_ids(self, cats: list[list[Any]], n: int) -> np.ndarray:
        """(n, categorical fields) bucket ids."""
        if n == 0:
            return np.empty((0, self._cat_idx.size), dtype=np.int64)
        out = np.empty((self._cat_idx.size, n), dtype=np.int64)
        for j, column in enumerate(zip(*cats)):
            out[j] = self._column_array(j, column)
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
            buckets = self._buckets(j, values).tolist()
            for k, value, bucket in zip(missing, values, buckets):
                if not isinstance(value, str) or len(value) <= CACHED_VALUE_CHARS:  # the cache's memory stays bounded
                    cache[value] = bucket
                found[k] = bucket
        return found

    @staticmethod
    def _numbers(nums: list[Any], n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, missing) as float64 / bool arrays of shape (n, width)."""
        try:
            values = np.array(nums, dtype=np.float64).reshape(n, width)
        except (TypeError, ValueError):
            # Strings among the numbers (CSV input): parse them one by one, with "" and "None" as
            # missing (no fixed-width string array: its width would be the longest value's).
            parsed = []
            for value in (v for row in nums for v in row):
                if value is None or value in ("", "None"):
                    parsed.append(np.nan)
                    continue
                try:
                    parsed.append(float(value))
                except (TypeError, ValueError):
                    text = str(value)
                    raise ConfigError(f"a numeric field holds a non-number: {text[:40]!r}"
                                      + ("..." if len(text) > 40 else "")) from None
            values = np.array(parsed, dtype=np.float64).reshape(n, width)
        return values, np.isnan(values)

    def build_columns(self, chunk: ColumnChunk) -> SparseBatch:
        """The batch of a whole :class:`~streamrec.stream.columns.ColumnChunk`: the same ids as
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
        batch = self._batch(np.ascontiguousarray(by_field.T), np.ascontiguousarray(dense.T), chunk.labels)
        if chunk.event_times is not None:
            batch.event_time = torch.from_numpy(chunk.event_times)
        return batch

    def _dictionary_ids(self, j: int, column: CategoricalColumn | None, n: int) -> np.ndarray:
        """Bucket ids of the ``j``-th categorical column from its dictionary; a missing value is
        hashed as the row path hashes ``None``."""
        if column is None:
            values, codes = np.empty(0, dtype=object), np.zeros(n, dtype=np.int64)
        else:
            if column.arrow is not None:
                hashed = hash_arrow_strings(column.arrow, self.spec.seed)
                if hashed is not None:  # ASCII values hashed from Arrow's buffers, no Python strings
                    with np.errstate(over="ignore"):
                        buckets = (splitmix64(hashed ^ self._cat_salt[j]) % self._cat_buckets[j]).astype(np.int64)
                    return np.append(buckets, self._column_array(j, ["None"]))[column.codes]
            values, codes = column.values, column.codes
        # through the field's cache, as the row path: a stream's batches repeat most values
        return self._column_array(j, [*values, "None"])[codes]

    def _buckets(self, j: int, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """The ``j``-th categorical field's bucket of each string in ``values`` (before its offset)."""
        with np.errstate(over="ignore"):
            h = splitmix64(hash_strings(values, self.spec.seed) ^ self._cat_salt[j])
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

    def recross(self, batch: SparseBatch) -> SparseBatch:
        """``batch`` (of a spec with the same fields) with this spec's crosses: the cross ids are a
        function of the field ids alone."""
        crossed = self._batch(batch.ids.numpy(), batch.dense.numpy(), None)
        return SparseBatch(batch.ids, crossed.cross_ids, batch.dense, batch.labels, batch.history, batch.event_time)

    def _batch(self, ids: np.ndarray, dense: np.ndarray, labels: Sequence[int] | np.ndarray | None) -> SparseBatch:
        """The batch of field ids (offsets added) and dense inputs, with the wide crosses."""
        spec = self.spec
        n = ids.shape[0]
        cross = np.empty((n, len(spec.crosses)), dtype=np.int64)
        base = spec.field_rows
        with np.errstate(over="ignore"):
            for k, (a, b) in enumerate(spec.crosses):
                mixed = splitmix64(ids[:, self._position[a]].astype(np.uint64) * GOLDEN
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
