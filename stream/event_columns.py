"""Columnar event batches: impressions or clicks of one partition as one Arrow IPC record batch.

The JSON event batch (stream/events.py) costs a consumer a Python object per value. A columnar
batch holds the same events as columns, one Arrow IPC stream per Kafka message (its bytes start
with Arrow's continuation marker ``ff ff ff ff``, which no JSON message can)::

    impressions  event_id: string, event_time: float64, user_id: string, item_id: string,
                 features: struct<one child per feature field: string | int64 | float64 | null>
    clicks       event_id: string, impression_id: string, event_time: float64, user_id: string
    schema metadata  {"streamrec": "events/1", "type": "impression" | "click"}

Feature values keep their kind in their column's type, as JSON values do in theirs (a string
column is categorical, a number column numeric, a null is missing); events of one batch are in
event-time order. Watermarks stay JSON messages. :func:`encode_columns` writes a batch (or
says it cannot: a feature that is a string in one event and a number in another), and
:func:`decode_columns` validates one with a few array operations per column; a bad row is
rejected alone, with the reason :func:`~streamrec.stream.events.validate` gives for the same
event as JSON, and a message that cannot be read as a batch at all is rejected whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from streamrec.stream import events
from streamrec.stream.arrow_ipc import UNREADABLE, CompressedBatch, read_table, write_table
from streamrec.stream.feature_blocks import FeatureBlock

ARROW_MARKER = b"\xff\xff\xff\xff"
FORMAT = b"events/1"
_ID_COLUMNS = {"impression": ("event_id", "user_id", "item_id"), "click": ("event_id", "user_id", "impression_id")}
_STRING_TYPES = (pa.string(), pa.large_string())


def is_columnar(raw: bytes) -> bool:
    return raw[:4] == ARROW_MARKER


def _feature_array(values: list[Any]) -> pa.Array | None:
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {str}:
        return pa.array(values, type=pa.string())
    if kinds == {int}:
        try:
            return pa.array(values, type=pa.int64())
        except OverflowError:
            return None
    if kinds == {int, float} or kinds == {float}:
        return pa.array(values, type=pa.float64())
    return None


def encode_columns(batch: list[events.Event]) -> bytes | None:
    """Valid impressions or clicks of one partition, in order, as one columnar message; None when
    they cannot be columns without changing a value's kind (the caller sends JSON instead)."""
    if not batch:
        return None
    kind = batch[0]["type"]
    if kind not in _ID_COLUMNS or any(e["type"] != kind for e in batch):
        return None
    arrays: dict[str, pa.Array] = {
        "event_id": pa.array([e["event_id"] for e in batch], type=pa.string()),
        "event_time": pa.array([float(e["event_time"]) for e in batch], type=pa.float64()),
        "user_id": pa.array([e["user_id"] for e in batch], type=pa.string()),
    }
    if kind == "impression":
        arrays["item_id"] = pa.array([e["item_id"] for e in batch], type=pa.string())
        names: dict[str, None] = {}
        for e in batch:
            names.update(dict.fromkeys(e["features"]))
        children = []
        for name in names:
            child = _feature_array([e["features"].get(name) for e in batch])
            if child is None:
                return None
            children.append(child)
        arrays["features"] = (pa.StructArray.from_arrays(children, names=list(names)) if names
                              else pa.array([{}] * len(batch), type=pa.struct([])))
    else:
        arrays["impression_id"] = pa.array([e["impression_id"] for e in batch], type=pa.string())
    return write_table(pa.table(arrays).replace_schema_metadata({b"streamrec": FORMAT, b"type": kind.encode()}))


@dataclass
class EventColumns:
    """The valid events of one columnar message, in order. ``targets`` is the item ids of
    impressions and the impression ids of clicks; ``block`` holds impressions' users, items and
    features (None for clicks)."""

    kind: str
    event_ids: list[str]
    times: list[float]
    user_ids: list[str]
    targets: list[str]
    block: FeatureBlock | None

    def __len__(self) -> int:
        return len(self.event_ids)

    def event(self, k: int) -> events.Event:
        """Row ``k`` as the JSON event it stands for."""
        if self.kind == "click":
            return events.click(self.event_ids[k], self.targets[k], self.times[k], self.user_ids[k])
        assert self.block is not None
        return events.impression(self.event_ids[k], self.times[k], self.user_ids[k], self.targets[k],
                                 self.block.row_dicts([k])[0])


def _whole(raw: bytes, reason: str) -> tuple[None, list[tuple[bytes, str]]]:
    return None, [(raw, reason)]


def row_event(kind: str, table: pa.Table, k: int) -> dict[str, Any]:
    """Row ``k`` of a decoded (not yet validated) table as a JSON event, whatever its values."""
    row = table.slice(k, 1).to_pylist()[0]
    event: dict[str, Any] = {"schema": events.SCHEMA_VERSION, "type": kind}
    event.update((name, row.get(name)) for name in ("event_id", "impression_id", "event_time", "user_id", "item_id")
                 if name in row)
    if kind == "impression":
        event["features"] = row.get("features") or {}
    return event


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


# what a features struct type asks of validation: (float children, children JSON cannot hold)
_CHECKS: dict[pa.DataType, tuple[list[int], list[int]]] = {}


def _checks(features: pa.DataType) -> tuple[list[int], list[int]]:
    checks = _CHECKS.get(features)
    if checks is None:
        floats = [k for k, child in enumerate(features) if pa.types.is_floating(child.type)]
        odd = [k for k, child in enumerate(features)
               if not (pa.types.is_floating(child.type) or child.type in _STRING_TYPES
                       or pa.types.is_integer(child.type) or pa.types.is_null(child.type))]
        if len(_CHECKS) > 1024:  # a producer varying its schema cannot grow this without bound
            _CHECKS.clear()
        checks = _CHECKS[features] = (floats, odd)
    return checks


def _valid(array: pa.Array) -> np.ndarray | None:
    """Where ``array`` holds a value (None: everywhere)."""
    return array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None


def _byte_lengths(array: pa.Array) -> np.ndarray:
    """Each string's length in bytes, from the offsets buffer (0 where null)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if pa.types.is_large_string(array.type) else np.int32)
    return np.diff(offsets[array.offset:array.offset + len(array) + 1])


def _suspect_rows(kind: str, table: pa.Table, features: pa.StructArray | None) -> np.ndarray:
    """Rows that may break a rule of :func:`events.validate` (every row that does is among them).
    Numpy over the arrays' buffers: a compute call with a Python scalar costs far more than this."""
    suspect = np.zeros(table.num_rows, dtype=bool)
    for name in _ID_COLUMNS[kind]:
        ids = _plain(table.column(name))
        lengths = _byte_lengths(ids)  # bytes bound characters from above: validate() decides exactly
        suspect |= (lengths == 0) | (lengths > events.MAX_ID_CHARS)
        valid = _valid(ids)
        if valid is not None:
            suspect |= ~valid
    times = _plain(table.column("event_time")).cast(pa.float64()).to_numpy(zero_copy_only=False)  # null: NaN
    suspect |= ~np.isfinite(times)
    if features is not None:
        floats, odd_types = _checks(features.type)
        for k in floats:
            numbers = features.field(k)
            if numbers.type != pa.float64():
                numbers = numbers.cast(pa.float64())
            # a null's slot holds any number: only a non-finite one in a valid slot counts
            raw = np.frombuffer(numbers.buffers()[1], dtype=np.float64)[numbers.offset:numbers.offset + len(numbers)]
            odd = ~np.isfinite(raw)
            if odd.any():
                valid = _valid(numbers)
                suspect |= odd if valid is None else odd & valid
        for k in odd_types:
            values = features.field(k)
            valid = _valid(values)
            suspect |= np.ones(len(values), dtype=bool) if valid is None else valid
    return suspect


def _row_bytes(table: pa.Table, features: pa.StructArray | None) -> np.ndarray:
    """An upper bound of each row's size as JSON, less its keys' and numbers' share."""
    total = np.zeros(table.num_rows, dtype=np.int64)
    strings = [_plain(table.column(name)) for name in table.column_names
               if table.schema.field(name).type in _STRING_TYPES]
    if features is not None:
        strings += [features.field(k) for k, child in enumerate(features.type) if child.type in _STRING_TYPES]
    for column in strings:
        total += 6 * _byte_lengths(column)  # a character may take 6 bytes escaped in JSON
    return total


def decode_columns(raw: bytes) -> tuple[EventColumns | None, list[tuple[bytes, str]]]:
    """Decode and validate one columnar message: ``(its valid events, [(bad event as JSON, reason),
    ...])``; a message that cannot be read as a columnar batch is one bad event (its own bytes)."""
    if len(raw) > events.MAX_MESSAGE_BYTES:
        return _whole(raw, f"message is {len(raw)} bytes; at most {events.MAX_MESSAGE_BYTES}")
    try:
        table = read_table(raw)
    except CompressedBatch:
        return _whole(raw, "columnar batches must be uncompressed (a compressed body is sized only as it is read)")
    except UNREADABLE as exc:
        return _whole(raw, f"not a readable Arrow IPC stream: {exc}")
    metadata = table.schema.metadata or {}
    if metadata.get(b"streamrec") != FORMAT:
        return _whole(raw, f"columnar message without schema metadata streamrec={FORMAT.decode()}")
    kind = metadata.get(b"type", b"").decode("utf-8", "replace")
    if kind not in _ID_COLUMNS:
        return _whole(raw, f"columnar message of type {kind!r}: only impression and click batches are columnar")
    schema = table.schema
    for name in (*_ID_COLUMNS[kind], "event_time"):
        if name not in schema.names:
            return _whole(raw, f"columnar {kind} batch without a {name!r} column")
        if schema.names.count(name) > 1:
            return _whole(raw, f"columnar {kind} batch with {name!r} twice")
        column_type = schema.field(name).type
        wanted = (column_type in _STRING_TYPES if name != "event_time"
                  else pa.types.is_floating(column_type) or pa.types.is_integer(column_type))
        if not wanted:
            return _whole(raw, f"column {name!r} of a columnar {kind} batch is {column_type}, not "
                               + ("a number" if name == "event_time" else "a string"))
    features: pa.StructArray | None = None
    if kind == "impression":
        if "features" not in schema.names or not pa.types.is_struct(schema.field("features").type):
            return _whole(raw, "columnar impression batch without a 'features' struct column")
        if schema.field("features").type.num_fields > events.MAX_FEATURES:
            return _whole(raw, f"'features' has {schema.field('features').type.num_fields} fields; "
                               f"at most {events.MAX_FEATURES}")
        names = schema.field("features").type.names if hasattr(schema.field("features").type, "names") else [
            child.name for child in schema.field("features").type]
        if len(set(names)) != len(names):
            return _whole(raw, "'features' names a field twice")
        features = _plain(table.column("features"))
        if features.null_count:
            return _whole(raw, "'features' must be an object in every row (a null struct row)")
    suspect = _suspect_rows(kind, table, features)
    if len(raw) > max(events.MAX_EVENT_BYTES, table.num_rows * events.TYPICAL_EVENT_BYTES):
        suspect |= _row_bytes(table, features) > events.MAX_EVENT_BYTES // 2
    bad: list[tuple[bytes, str]] = []
    good = np.ones(table.num_rows, dtype=bool)
    for k in np.flatnonzero(suspect).tolist():
        event = row_event(kind, table, k)
        encoded = orjson.dumps(event, default=repr)
        problem = events.validate(event)
        if problem is None and len(encoded) > events.MAX_EVENT_BYTES:
            problem = f"event is {len(encoded)} bytes as JSON; at most {events.MAX_EVENT_BYTES}"
        if problem is not None:
            bad.append((encoded, problem))
            good[k] = False
    if not good.all():
        table = table.filter(pa.array(good))
        if features is not None:
            features = features.filter(pa.array(good))
    times = table.column("event_time").cast(pa.float64()).to_numpy().tolist()
    event_ids = table.column("event_id").to_pylist()
    users = table.column("user_id")
    if kind == "click":
        return EventColumns(kind, event_ids, times, users.to_pylist(), table.column("impression_id").to_pylist(),
                            None), bad
    items = table.column("item_id")
    assert features is not None
    block = FeatureBlock.from_struct(_plain(users), _plain(items), features)
    return EventColumns(kind, event_ids, times, users.to_pylist(), items.to_pylist(), block), bad




def decode_message(raw: bytes) -> tuple[list[events.Event], list[tuple[bytes, str]]]:
    """Any message (one JSON event, a JSON batch or a columnar batch) as its valid events, each a
    dict as :func:`events.decode_events` gives: for tools and checks, not for the hot path."""
    if not is_columnar(raw):
        return events.decode_events(raw)
    columns, bad = decode_columns(raw)
    return ([] if columns is None else [columns.event(k) for k in range(len(columns))]), bad
