"""Messages on ``<ns>.examples``: labelled examples from the join stage (``streamrec join``).

One message carries a run of examples of one source partition, in the order the joiner released
them, as JSON::

    {"schema": 1, "type": "examples", "partition": 3, "final": false,
     "examples": [[impression_id, user_id, item_id, {features}, label, event_time, label_time], ...]}

``final: true`` (with no examples) says the partition's replay has ended: every impression of it
is in an earlier message. The message goes to the same partition index of ``<ns>.examples`` as
its source, so a user's examples stay in order and one reader per partition sees them in order.

Examples whose features arrived as columns (stream/feature_blocks.py) travel as columns too: one
Arrow IPC stream (starting ``ff ff ff ff``, as a columnar event batch) with columns
``impression_id``, ``user_id``, ``item_id`` (strings), ``label`` (int8), ``event_time``,
``label_time`` (float64) and ``features`` (a struct, as in a columnar impression batch), and
schema metadata ``{"streamrec": "examples/1", "partition": "3"}``. A reader takes either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamrec.consumers.example_source import Example, example_rows
from streamrec.stream.arrow_ipc import UNREADABLE, CompressedBatch, read_table, write_table
from streamrec.stream.event_columns import is_columnar
from streamrec.stream.feature_blocks import FeatureBlock, gather, is_row_ref

SCHEMA_VERSION = 1
MAX_EXAMPLES_PER_MESSAGE = 1000


COLUMNS_FORMAT = b"examples/1"


def encode(partition: int, examples: list[Example]) -> bytes:
    """Columns when every example's features are columns already (and their batches' columns
    combine); else JSON."""
    if examples and all(is_row_ref(e.features) for e in examples):
        block = gather([e.features for e in examples])  # type: ignore[misc]
        if block is not None:
            return _encode_columns(partition, block, examples)
    return orjson.dumps({
        "schema": SCHEMA_VERSION, "type": "examples", "partition": partition, "final": False,
        "examples": example_rows(examples),
    })


def encode_final(partition: int) -> bytes:
    return orjson.dumps({"schema": SCHEMA_VERSION, "type": "examples", "partition": partition, "final": True,
                         "examples": []})


def _encode_columns(partition: int, block: FeatureBlock, examples: list[Example]) -> bytes:
    """``examples`` (their features the rows of ``block``, in order) as one columnar message."""
    return write_table(pa.table({
        "impression_id": pa.array([e.impression_id for e in examples], type=pa.string()),
        "user_id": block.users,
        "item_id": block.items,
        "label": pa.array([e.label for e in examples], type=pa.int8()),
        "event_time": pa.array([e.event_time for e in examples], type=pa.float64()),
        "label_time": pa.array([e.label_time for e in examples], type=pa.float64()),
        "features": block.features_struct(),
    }).replace_schema_metadata({b"streamrec": COLUMNS_FORMAT, b"partition": str(partition).encode()}))


_COLUMN_TYPES = {"impression_id": pa.string(), "user_id": pa.string(), "item_id": pa.string(), "label": pa.int8(),
                 "event_time": pa.float64(), "label_time": pa.float64()}


def _decode_columns(raw: bytes) -> tuple[int, list[Example], bool]:
    try:
        table = read_table(raw)
    except CompressedBatch:
        raise ValueError("columnar examples must be uncompressed") from None
    except UNREADABLE as exc:
        raise ValueError(f"not a readable Arrow IPC stream: {exc}") from None
    metadata = table.schema.metadata or {}
    if metadata.get(b"streamrec") != COLUMNS_FORMAT:
        raise ValueError("not an examples message")
    try:
        partition = int(metadata.get(b"partition", b""))
    except ValueError:
        partition = -1
    if partition < 0:
        raise ValueError("partition must be a non-negative integer")
    schema = table.schema
    for name, kind in _COLUMN_TYPES.items():
        if name not in schema.names or schema.field(name).type != kind:
            raise ValueError(f"an examples batch needs a {name!r} column of {kind}")
    if "features" not in schema.names or not pa.types.is_struct(schema.field("features").type):
        raise ValueError("an examples batch needs a 'features' struct column")
    for name in ("impression_id", "user_id", "item_id", "label", "event_time", "label_time", "features"):
        if table.column(name).null_count:
            raise ValueError(f"an example's {name} is null")
    if not pc.all(pc.is_in(table.column("label"), pa.array([0, 1], type=pa.int8()))).as_py():
        raise ValueError("an example's label must be 0 or 1")
    times = table.column("event_time").to_numpy()
    if not np.isfinite(times).all():
        raise ValueError("an example's event_time must be finite")
    block = FeatureBlock.from_struct(*(table.column(name).combine_chunks()
                                       for name in ("user_id", "item_id", "features")))
    ids, users, items = (table.column(name).to_pylist() for name in ("impression_id", "user_id", "item_id"))
    labels = table.column("label").to_numpy().tolist()
    label_times = table.column("label_time").to_numpy().tolist()
    return partition, [Example(ids[k], users[k], items[k], (block, k), labels[k], t, label_times[k])
                       for k, t in enumerate(times.tolist())], False


def decode(raw: bytes) -> tuple[int, list[Example], bool]:
    """``(source partition, examples, final)``; ValueError with the reason for anything else."""
    if is_columnar(raw):
        return _decode_columns(raw)
    try:
        message: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(message) is not dict or message.get("type") != "examples":
        raise ValueError("not an examples message")
    if message.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema {message.get('schema')!r}")
    partition, rows = message.get("partition"), message.get("examples")
    if type(partition) is not int or partition < 0 or type(rows) is not list:
        raise ValueError("partition must be a non-negative integer and examples a list")
    out = []
    for row in rows:
        if (type(row) is not list or len(row) != 7 or type(row[0]) is not str or type(row[1]) is not str
                or type(row[2]) is not str or type(row[3]) is not dict or row[4] not in (0, 1)):
            raise ValueError("an example must be [impression_id, user_id, item_id, {features}, 0|1, time, time]")
        try:
            out.append(Example(row[0], row[1], row[2], row[3], int(row[4]), float(row[5]), float(row[6])))
        except (TypeError, ValueError):
            raise ValueError("an example's times must be numbers") from None
    return partition, out, bool(message.get("final"))
