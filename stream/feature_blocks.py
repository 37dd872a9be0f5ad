"""Impressions' features kept as the Arrow columns they arrived in, and gathered back into columns.

An impression that arrives in a columnar event batch (stream/event_columns.py) is not turned
into a dict: the joiner holds ``(block, row)`` (a :data:`RowRef`) where a JSON impression holds
its feature dict, and the examples it releases carry the same reference. A trainer gathers a
batch's rows from their blocks into one :class:`~streamrec.stream.columns.ColumnChunk`
(:func:`gather_columns`) and featurizes it with ``Featurizer.build_columns``, the file path's
column path, so no feature value becomes a Python object on the way from the broker to the model.

Where columns cannot be gathered as the spec reads them (a field whose values arrive as numbers
for a categorical field, or as strings for a numeric one) :func:`gather_columns` says so and the
caller materialises the rows as the dicts the JSON path would have made (:func:`feature_dicts`),
which the row path featurizes exactly as it would the JSON events.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamrec.stream.arrow_ipc import read_table, write_table
from streamrec.stream.columns import CategoricalColumn, ColumnChunk, NumericColumn
from streamrec.stream.feature_spec import ID_FIELDS, FeatureSpec


class FeatureBlock:
    """One event batch's impressions: ``users``, ``items`` (string arrays) and ``features`` (a
    table, one column per feature field, null where an event has no value), row for row."""

    __slots__ = ("users", "items", "features")

    def __init__(self, users: pa.Array, items: pa.Array, features: pa.Table) -> None:
        self.users, self.items, self.features = users, items, features

    def __len__(self) -> int:
        return len(self.users)

    def row_dicts(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The feature dicts of ``rows``, as the JSON path holds them (a null is ``None``)."""
        taken = self.features.take(pa.array(rows, type=pa.int64()))
        return taken.to_pylist() if taken.num_columns else [{} for _ in rows]

    def take(self, rows: Sequence[int] | np.ndarray) -> FeatureBlock:
        index = pa.array(rows, type=pa.int64())
        return FeatureBlock(self.users.take(index), self.items.take(index), self.features.take(index))

    @classmethod
    def from_struct(cls, users: pa.Array, items: pa.Array, features: pa.StructArray) -> FeatureBlock:
        """A block from the ``features`` struct column a columnar message or checkpoint holds."""
        table = (pa.Table.from_struct_array(features) if features.type.num_fields
                 else pa.table({"_": pa.nulls(len(features))}).drop_columns(["_"]))
        return cls(users, items, table)

    def features_struct(self) -> pa.StructArray:
        """The features as one struct column, as a columnar message or checkpoint holds them."""
        if not self.features.num_columns:
            return pa.array([{}] * len(self), type=pa.struct([]))
        return pa.StructArray.from_arrays([c.combine_chunks() for c in self.features.columns],
                                          names=self.features.column_names)


RowRef = tuple[FeatureBlock, int]


def is_row_ref(features: Any) -> bool:
    return type(features) is tuple


def _runs(refs: Sequence[RowRef]) -> list[tuple[FeatureBlock, list[int]]]:
    """Consecutive references to one block, grouped: (block, its rows in order)."""
    runs: list[tuple[FeatureBlock, list[int]]] = []
    last: FeatureBlock | None = None
    for block, row in refs:
        if block is not last:
            runs.append((block, []))
            last = block
        runs[-1][1].append(row)
    return runs


def feature_dicts(features: Sequence[dict[str, Any] | RowRef]) -> list[dict[str, Any]]:
    """Every example's feature dict, references materialised (a block is read once per run)."""
    out: list[dict[str, Any]] = []
    pending: list[RowRef] = []

    def flush() -> None:
        for block, rows in _runs(pending):
            out.extend(block.row_dicts(rows))
        pending.clear()

    for value in features:
        if is_row_ref(value):
            pending.append(value)  # type: ignore[arg-type]
        else:
            flush()
            out.append(value)  # type: ignore[arg-type]
    flush()
    return out


def gather(refs: Sequence[RowRef]) -> FeatureBlock | None:
    """The referenced rows as one block, in order; None when their blocks' columns do not
    combine (one field a string in one block and a number in another)."""
    pieces = [block.take(rows) if len(rows) != len(block) or rows != list(range(len(block))) else block
              for block, rows in _runs(refs)]
    if len(pieces) == 1:
        return pieces[0]
    try:
        features = pa.concat_tables([p.features for p in pieces], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return FeatureBlock(pa.concat_arrays([p.users for p in pieces]), pa.concat_arrays([p.items for p in pieces]),
                        features)


def _encoded(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes with "missing" one past the end, distinct values) of a column."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks != 1 else encoded.chunk(0)
    dictionary, indices = encoded.dictionary, encoded.indices
    # from the buffers: a compute call given a Python scalar (fill_null(n)) costs more than the rest
    codes = np.frombuffer(indices.buffers()[1], dtype=np.int32)[indices.offset:indices.offset + len(indices)]
    codes = codes.astype(np.int64)
    if indices.null_count:
        codes[~indices.is_valid().to_numpy(zero_copy_only=False)] = len(dictionary)
    return codes, dictionary


def _categorical(column: pa.Array | pa.ChunkedArray) -> CategoricalColumn:
    codes, dictionary = _encoded(column)
    return CategoricalColumn(codes, arrow=dictionary)


def _numeric(column: pa.Array | pa.ChunkedArray) -> NumericColumn:
    """Numbers row by row (codes 0..n-1, "missing" past the end): bucketing a number is a few
    array operations, cheaper than hashing it into a dictionary first."""
    numbers = column.cast(pa.float64())
    if isinstance(numbers, pa.ChunkedArray):
        numbers = numbers.combine_chunks()
    values = numbers.to_numpy(zero_copy_only=False)  # a null reads NaN
    codes = np.arange(len(values), dtype=np.int64)
    if numbers.null_count:
        missing = ~numbers.is_valid().to_numpy(zero_copy_only=False)
        values = np.where(missing, 0.0, values)
        codes[missing] = len(values)
    return NumericColumn(codes, values)


def gather_columns(spec: FeatureSpec, refs: Sequence[RowRef], labels: np.ndarray,
                   event_times: np.ndarray | None) -> ColumnChunk | None:
    """A batch's rows as the column chunk ``Featurizer.build_columns`` reads, or None where a
    field's values do not have the kind the spec gives it (the caller takes the row path)."""
    block = gather(refs)
    if block is None:
        return None
    present = set(block.features.column_names)
    categorical: dict[str, CategoricalColumn] = {}
    numeric: dict[str, NumericColumn] = {}
    for field in spec.fields:
        if field.name in ID_FIELDS or field.name not in present:
            continue
        column = block.features.column(field.name)
        kind = column.type
        if pa.types.is_null(kind) or column.null_count == len(column):
            continue  # every value missing: the field's "missing" bucket, as when it is absent
        if field.kind == "cat":
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                return None
            categorical[field.name] = _categorical(column)
        else:
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                return None
            numeric[field.name] = _numeric(column)
    return ColumnChunk(0, labels, _categorical(block.users), _categorical(block.items), categorical, numeric,
                       event_times)


def pack_features(values: Sequence[dict[str, Any] | RowRef]) -> tuple[list[dict[str, Any] | int], str | None]:
    """Features for a JSON checkpoint: dicts as they are, references as row numbers of one Arrow
    IPC table (returned base64-encoded; None when there are no references). Cheaper than a dict
    per row, and a resumed worker gets references back (:func:`unpack_features`)."""
    refs = [v for v in values if is_row_ref(v)]
    if not refs:
        return list(values), None  # type: ignore[arg-type]
    block = gather(refs)  # type: ignore[arg-type]
    if block is None:  # columns that do not combine: as dicts
        return feature_dicts(values), None
    out: list[dict[str, Any] | int] = []
    row = 0
    for value in values:
        if is_row_ref(value):
            out.append(row)
            row += 1
        else:
            out.append(value)  # type: ignore[arg-type]
    table = pa.table({"user_id": block.users, "item_id": block.items, "features": block.features_struct()})
    return out, base64.b64encode(write_table(table)).decode("ascii")


def unpack_features(values: Sequence[dict[str, Any] | int], packed: str | None) -> list[dict[str, Any] | RowRef]:
    """:func:`pack_features` undone: row numbers become references into the checkpoint's table."""
    if packed is None:
        return list(values)  # type: ignore[arg-type]
    table = read_table(base64.b64decode(packed))
    block = FeatureBlock.from_struct(*(table.column(name).combine_chunks()
                                       for name in ("user_id", "item_id", "features")))
    out: list[dict[str, Any] | RowRef] = []
    for value in values:
        if type(value) is int:
            if not 0 <= value < len(block):
                raise ValueError(f"a checkpointed example points at feature row {value} of {len(block)}")
            out.append((block, value))
        else:
            out.append(value)  # type: ignore[arg-type]
    return out
