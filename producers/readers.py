"""Readers for real CTR log formats, all yielding :class:`Row`.

Formats (``--format``):

* ``criteo``  TSV: label, 13 integer fields ``I1..I13``, 26 categorical ``C1..C26``; empty = missing.
* ``avazu``   CSV with a header: ``id``, ``click`` (label), ``hour`` (YYMMDDHH, UTC), the rest categorical.
* ``libsvm`` / ``libfm``  ``label idx:val idx:val ...``; label > 0 is a click. Feature k of a row
  becomes categorical field ``f{k}`` with token ``idx`` (``idx=val`` when val is not 1), which
  suits one-hot data such as Frappe.
* ``csv`` / ``jsonl`` with a :class:`ColumnMapping` naming the label, user, item, time and
  feature columns (numeric ones listed separately).

Where a format names no user or item, ``user_field`` / ``item_field`` pick raw fields for them
(those fields then leave the feature dict); the row index is the fallback user and ``"none"`` the fallback item. Rows without a time get
``row_index * seconds_per_row`` of event time.

Malformed rows are counted with their line numbers in :class:`ReadStats`; with ``strict`` the
first one raises :class:`~streamrec.stream.errors.InputFormatError` naming file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from streamrec.stream.errors import ConfigError, InputFormatError

FORMATS = ("criteo", "avazu", "libsvm", "libfm", "csv", "jsonl")
CRITEO_INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
MAX_REPORTED_ERRORS = 20


@dataclass(slots=True)
class Row:
    """One log row: an impression with its label, user, item, event time and features."""

    label: int
    user_id: str
    item_id: str
    event_time: float
    features: dict[str, Any]


@dataclass
class ReadStats:
    """Rows read and malformed rows (with the first reasons), for reports."""

    rows: int = 0
    malformed: int = 0
    errors: list[str] = field(default_factory=list)  # "path:line: reason", the first few

    def record(self, path: Path, line: int, reason: str, strict: bool) -> None:
        if strict:
            raise InputFormatError(f"{path}:{line}: {reason}")
        self.malformed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class ColumnMapping:
    """Which csv/jsonl columns are the label, user, item, time and features (``--columns``)."""

    label: str = "label"
    user: str | None = None
    item: str | None = None
    time: str | None = None
    features: tuple[str, ...] = ()  # empty: every other column
    numeric: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReaderOptions:
    """How a log is read: user and item fields, strictness, the event time of rows without one."""

    user_field: str | None = None
    item_field: str | None = None
    strict: bool = False
    start_time: float = 1_700_000_000.0
    seconds_per_row: float = 0.01
    mapping: ColumnMapping = ColumnMapping()


def _identity(row_index: int, features: dict[str, Any], opts: ReaderOptions) -> tuple[str, str]:
    # The named fields become the event's user and item, so they leave the feature dict.
    user = features.pop(opts.user_field, None) if opts.user_field else None
    item = features.pop(opts.item_field, None) if opts.item_field else None
    return (str(user) if user not in (None, "") else f"row{row_index}",
            str(item) if item not in (None, "") else "none")


def _check_fields(opts: ReaderOptions, available: tuple[str, ...] | list[str], fmt: str) -> None:
    for flag, name in (("--user-field", opts.user_field), ("--item-field", opts.item_field)):
        if name is not None and name not in available:
            raise ConfigError(f"{flag} {name!r} is not a field of format {fmt}; fields: {', '.join(available)}")


def read_criteo(path: Path, opts: ReaderOptions, stats: ReadStats) -> Iterator[Row]:
    _check_fields(opts, CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS, "criteo")
    int_fields, cat_fields = CRITEO_INT_FIELDS, CRITEO_CAT_FIELDS
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 40:
                stats.record(path, line_no, f"expected 40 tab-separated columns, found {len(parts)}", opts.strict)
                continue
            label = parts[0]
            if label not in ("0", "1"):
                stats.record(path, line_no, f"label must be 0 or 1, got {label!r}", opts.strict)
                continue
            try:
                ints = [int(raw) if raw else None for raw in parts[1:14]]
            except ValueError:
                stats.record(path, line_no, "integer columns I1..I13 must be integers or empty", opts.strict)
                continue
            features: dict[str, Any] = dict(zip(int_fields, ints))
            features.update(zip(cat_fields, [raw or None for raw in parts[14:]]))
            index = stats.rows
            user, item = _identity(index, features, opts)
            stats.rows += 1
            yield Row(int(label), user, item, opts.start_time + index * opts.seconds_per_row, features)


def _avazu_time(hour: str) -> float:
    return datetime.strptime(hour, "%y%m%d%H").replace(tzinfo=timezone.utc).timestamp()


def read_avazu(path: Path, opts: ReaderOptions, stats: ReadStats) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or "click" not in header or "hour" not in header:
            raise InputFormatError(f"{path}:1: Avazu CSV needs a header with 'click' and 'hour' columns")
        label_at, hour_at = header.index("click"), header.index("hour")
        skip = {label_at, hour_at} | ({header.index("id")} if "id" in header else set())
        names = [(i, name) for i, name in enumerate(header) if i not in skip]
        _check_fields(opts, [n for _, n in names], "avazu")
        last_time: float | None = None
        rank_in_hour = 0
        for line_no, parts in enumerate(reader, 2):
            if len(parts) != len(header):
                stats.record(path, line_no, f"expected {len(header)} columns, found {len(parts)}", opts.strict)
                continue
            if parts[label_at] not in ("0", "1"):
                stats.record(path, line_no, f"click must be 0 or 1, got {parts[label_at]!r}", opts.strict)
                continue
            try:
                hour_start = _avazu_time(parts[hour_at])
            except ValueError:
                stats.record(path, line_no, f"hour must be YYMMDDHH, got {parts[hour_at]!r}", opts.strict)
                continue
            # Avazu has hour resolution; spread the rows of one hour so event time still advances.
            rank_in_hour = rank_in_hour + 1 if hour_start == last_time else 0
            last_time = hour_start
            features = {name: (parts[i] or None) for i, name in names}
            user, item = _identity(stats.rows, features, opts)
            stats.rows += 1
            event_time = hour_start + min(rank_in_hour * opts.seconds_per_row, 3599.0)
            yield Row(int(parts[label_at]), user, item, event_time, features)


def read_libsvm(path: Path, opts: ReaderOptions, stats: ReadStats) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                label = 1 if float(parts[0]) > 0 else 0
            except ValueError:
                stats.record(path, line_no, f"label must be a number, got {parts[0]!r}", opts.strict)
                continue
            features: dict[str, Any] = {}
            bad = None
            for k, token in enumerate(parts[1:]):
                idx, sep, val = token.partition(":")
                if not sep or not idx:
                    bad = f"feature {token!r} is not idx:val"
                    break
                try:
                    numeric_val = float(val)
                except ValueError:
                    bad = f"feature {token!r} has a non-numeric value"
                    break
                features[f"f{k}"] = idx if numeric_val == 1.0 else f"{idx}={val}"
            if bad:
                stats.record(path, line_no, bad, opts.strict)
                continue
            user, item = _identity(stats.rows, features, opts)
            index = stats.rows
            stats.rows += 1
            yield Row(label, user, item, opts.start_time + index * opts.seconds_per_row, features)


def _mapped_row(record: dict[str, Any], opts: ReaderOptions, index: int) -> tuple[Row | None, str | None]:
    m = opts.mapping
    if m.label not in record:
        return None, f"missing label column {m.label!r}"
    raw_label = record[m.label]
    try:
        label = 1 if float(raw_label) > 0 else 0
    except (TypeError, ValueError):
        return None, f"label {raw_label!r} is not a number"
    reserved = {m.label, m.user, m.item, m.time}
    names = m.features or tuple(k for k in record if k not in reserved)
    features: dict[str, Any] = {}
    for name in names:
        value = record.get(name)
        if value in ("", None):
            features[name] = None
        elif name in m.numeric:
            try:
                features[name] = float(value)
            except (TypeError, ValueError):
                return None, f"numeric column {name!r} has {value!r}"
        else:
            features[name] = str(value)
    user = str(record[m.user]) if m.user and record.get(m.user) not in (None, "") else None
    item = str(record[m.item]) if m.item and record.get(m.item) not in (None, "") else None
    if user is None or item is None:
        fallback_user, fallback_item = _identity(index, features, opts)
        user, item = user or fallback_user, item or fallback_item
    event_time = opts.start_time + index * opts.seconds_per_row
    if m.time:
        try:
            event_time = float(record[m.time])
        except (KeyError, TypeError, ValueError):
            return None, f"time column {m.time!r} is missing or not seconds since the epoch"
    return Row(label, user, item, event_time, features), None


def _counted_row(path: Path, line_no: int, record: dict[str, Any], opts: ReaderOptions,
                 stats: ReadStats) -> Row | None:
    """The mapped row of one csv/jsonl record, counted; None (and the reason recorded) if malformed."""
    row, reason = _mapped_row(record, opts, stats.rows)
    if row is None:
        stats.record(path, line_no, reason or "bad row", opts.strict)
        return None
    stats.rows += 1
    return row


def read_csv(path: Path, opts: ReaderOptions, stats: ReadStats) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise InputFormatError(f"{path}:1: CSV needs a header row")
        missing = [c for c in (opts.mapping.label, opts.mapping.user, opts.mapping.item, opts.mapping.time,
                               *opts.mapping.features) if c and c not in reader.fieldnames]
        if missing:
            raise ConfigError(f"column mapping names columns not in {path}: {', '.join(missing)}")
        for line_no, record in enumerate(reader, 2):
            if None in record:
                stats.record(path, line_no, "more columns than the header", opts.strict)
                continue
            row = _counted_row(path, line_no, record, opts, stats)
            if row is not None:
                yield row


def read_jsonl(path: Path, opts: ReaderOptions, stats: ReadStats) -> Iterator[Row]:
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                stats.record(path, line_no, f"not valid JSON: {exc}", opts.strict)
                continue
            if not isinstance(record, dict):
                stats.record(path, line_no, "line is not a JSON object", opts.strict)
                continue
            row = _counted_row(path, line_no, record, opts, stats)
            if row is not None:
                yield row


_READERS = {"criteo": read_criteo, "avazu": read_avazu, "libsvm": read_libsvm, "libfm": read_libsvm,
            "csv": read_csv, "jsonl": read_jsonl}


def read_rows(path: Path | str, fmt: str, opts: ReaderOptions | None = None,
              stats: ReadStats | None = None) -> Iterator[Row]:
    """Rows of a log file in ``fmt``; malformed rows are counted in ``stats`` (or raise under strict)."""
    path = Path(path)
    if fmt not in _READERS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    return _READERS[fmt](path, opts or ReaderOptions(), stats if stats is not None else ReadStats())


def parse_mapping(spec: str | None, numeric: str | None = None) -> ColumnMapping:
    """Parse ``label=click,user=uid,item=ad,time=ts,features=a;b;c`` into a :class:`ColumnMapping`."""
    if not spec:
        return ColumnMapping(numeric=tuple(filter(None, (numeric or "").split(","))))
    values: dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("label", "user", "item", "time", "features"):
            raise ConfigError(f"--columns: {part!r} is not one of label=, user=, item=, time=, features=")
        values[key] = tuple(v for v in value.split(";") if v) if key == "features" else value
    return ColumnMapping(**values, numeric=tuple(filter(None, (numeric or "").split(","))))
