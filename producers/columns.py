"""A log file as chunks of columns, parsed in C++ (pyarrow), for the prequential pass.

Turning text into Python rows and rows back into arrays costs more than ``lr`` spends learning
them. Here pyarrow parses each block of the file into typed columns and dictionary-encodes the
categorical ones, so the featurizer hashes each distinct value of a block once
(:meth:`streamrec.stream.featurizer.Featurizer.build_columns`) instead of each row's value.

A chunk holds exactly what :func:`streamrec.producers.readers.read_rows` yields for the same lines
(the same rows, user and item ids, features and malformed-row accounting); the two paths are
checked against each other in tests/test_columns.py. Formats without a columnar reader use the
row readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.producers.readers import (
    CRITEO_CAT_FIELDS,
    CRITEO_INT_FIELDS,
    ReaderOptions,
    ReadStats,
    _check_fields,
)
from streamrec.stream.columns import CategoricalColumn, ColumnChunk, NumericColumn
from streamrec.stream.errors import ConfigError, InputFormatError

COLUMNAR_FORMATS = ("criteo",)
BLOCK_BYTES = 1 << 23  # about 32k Criteo rows: large enough to vectorise, small enough to pipeline


def _identity_column(column: CategoricalColumn | None, first_row: int, n: int, fallback: str | None) -> CategoricalColumn:
    """The user (``fallback`` None: ``row<index>`` where missing) or item (``fallback``) column,
    as :func:`streamrec.producers.readers._identity` makes them."""
    if column is None:
        column = CategoricalColumn(np.zeros(n, dtype=np.int64), np.empty(0, dtype=object))
    missing = np.flatnonzero(column.codes == column.distinct)
    if not len(missing):
        return column
    codes = column.codes.astype(np.int64)
    if fallback is None:
        extra = np.array([f"row{first_row + k}" for k in missing], dtype=object)
        codes[missing] = len(column.values) + np.arange(len(missing))
    else:
        extra = np.array([fallback], dtype=object)
        codes[missing] = len(column.values)
    return CategoricalColumn(codes, np.concatenate([column.values.astype(object), extra]))


def _dictionary(array: Any) -> CategoricalColumn:
    """A pyarrow dictionary array as a :class:`CategoricalColumn` (nulls, i.e. empty fields, are missing)."""
    dictionary = array.dictionary
    return CategoricalColumn(array.indices.fill_null(len(dictionary)).to_numpy(), arrow=dictionary)


def read_criteo_columns(path: Path, opts: ReaderOptions, stats: ReadStats,
                        block_bytes: int = BLOCK_BYTES) -> Iterator[ColumnChunk]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    _check_fields(opts, CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS, "criteo")
    names = ["label", *CRITEO_INT_FIELDS, *CRITEO_CAT_FIELDS]
    skipped: list[int] = []  # line numbers of rows pyarrow skipped (wrong column count)

    strict_failure: list[str] = []

    def wrong_width(row: Any) -> str:
        reason = f"expected 40 tab-separated columns, found {row.actual_columns}"
        if opts.strict:  # an exception raised here would reach the caller only as pyarrow's own error
            strict_failure.append(f"{path}:{row.number}: {reason}")
            return "error"
        skipped.append(row.number)
        stats.record(path, row.number, reason, strict=False)
        return "skip"

    def parse_error(exc: Exception) -> InputFormatError:
        return InputFormatError(strict_failure[0] if strict_failure else f"{path}: {exc}")

    types = {name: pa.dictionary(pa.int32(), pa.string()) for name in names}
    try:
        # use_threads=False: pyarrow then numbers the skipped lines; the caller reads ahead in a thread
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names, block_size=block_bytes, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False,
                                              invalid_row_handler=wrong_width),
            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                  null_values=[""], quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise parse_error(exc) from None
    lines_done = 0  # lines of the file behind the chunks yielded so far
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise parse_error(exc) from None
        n = batch.num_rows
        # the lines this batch came from: the next n lines not skipped by pyarrow
        ahead = [s for s in skipped if s > lines_done]
        lines = np.arange(lines_done + 1, lines_done + 1 + n + len(ahead))
        lines = lines[~np.isin(lines, ahead)][:n]
        lines_done = int(lines[-1]) if n else lines_done + len(ahead)
        skipped[:] = [s for s in ahead if s > lines_done]  # the rest belong to later batches
        label = _dictionary(batch.column(0))
        label_values = np.append(label.values.astype(object), None)
        valid = np.isin(label_values, ["0", "1"])[label.codes]
        labels = (label_values == "1")[label.codes].astype(np.int8)
        numeric = {}
        for j, name in enumerate(CRITEO_INT_FIELDS, 1):
            numeric[name], ok = _integers(batch.column(j))
            valid &= ok
        if not valid.all():
            for k in np.flatnonzero(~valid):
                text = label_values[label.codes[k]]
                if text is None and all(batch.column(j)[int(k)].as_py() is None for j in range(1, 40)):
                    reason = "expected 40 tab-separated columns, found 1"  # an empty line, which pyarrow fills with nulls
                elif text not in ("0", "1"):
                    reason = f"label must be 0 or 1, got {text or ''!r}"
                else:
                    reason = "integer columns I1..I13 must be integers or empty"
                stats.record(path, int(lines[k]), reason, opts.strict)
            keep = np.flatnonzero(valid)
            batch = batch.take(pa.array(keep))
            labels = labels[keep]
            numeric = {name: NumericColumn(c.codes[keep], c.values) for name, c in numeric.items()}
            n = batch.num_rows
        if n == 0:
            continue
        first_row = stats.rows
        stats.rows += n
        categorical = {name: _dictionary(batch.column(14 + k)) for k, name in enumerate(CRITEO_CAT_FIELDS)}
        user = categorical.pop(opts.user_field) if opts.user_field else None
        item = categorical.pop(opts.item_field) if opts.item_field else None
        # the row reader's times for rows without one: the start plus a fixed step per valid row
        times = opts.start_time + np.arange(first_row, first_row + n, dtype=np.float64) * opts.seconds_per_row
        yield ColumnChunk(first_row, labels, _identity_column(user, first_row, n, None),
                          _identity_column(item, first_row, n, "none"), categorical, numeric, times)


def _integers(array: Any) -> tuple[NumericColumn, np.ndarray]:
    """A dictionary-encoded text column of integers as a :class:`NumericColumn`, and which rows
    hold a valid integer (or nothing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = array.dictionary
    codes = array.indices.fill_null(len(text)).to_numpy()
    try:
        values = pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
        return NumericColumn(codes, values), np.ones(len(codes), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parsed = []
    for raw in text.to_pylist():
        try:
            parsed.append(float(int(raw)))
        except ValueError:
            parsed.append(np.nan)
    values = np.array(parsed, dtype=np.float64)
    bad = np.append(np.isnan(values), False)  # the missing code is fine
    return NumericColumn(codes, np.where(np.isnan(values), 0.0, values)), ~bad[codes]


def columnar_fields(fmt: str, opts: ReaderOptions) -> bool:
    """Whether the columnar reader covers this format and these options: the user and item must come from
    categorical fields (an integer field as an id would need the row readers' text form)."""
    if fmt not in COLUMNAR_FORMATS:
        return False
    return all(name is None or name in CRITEO_CAT_FIELDS for name in (opts.user_field, opts.item_field))


def first_rows(chunks: Iterable[ColumnChunk], limit: int) -> Iterator[ColumnChunk]:
    """The chunks holding the first ``limit`` rows, the last one cut to size."""
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        if len(chunk) > left:
            chunk = chunk.head(left)
        left -= len(chunk)
        yield chunk


def read_columns(path: Path | str, fmt: str, opts: ReaderOptions | None = None,
                 stats: ReadStats | None = None, block_bytes: int = BLOCK_BYTES) -> Iterator[ColumnChunk]:
    """Column chunks of a log file in one of :data:`COLUMNAR_FORMATS`."""
    path = Path(path)
    if fmt not in COLUMNAR_FORMATS:
        raise ConfigError(f"--format {fmt!r} has no columnar reader; columnar formats: {', '.join(COLUMNAR_FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    return read_criteo_columns(path, opts or ReaderOptions(), stats if stats is not None else ReadStats(), block_bytes)
