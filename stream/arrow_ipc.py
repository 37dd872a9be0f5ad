"""Arrow IPC streams in and out of Kafka messages and checkpoints, read only when they are safe to read.

Every Arrow payload this project reads (columnar event batches, columnar examples, checkpointed
feature rows) comes through :func:`read_table`: it refuses a stream whose record batches are
compressed before any body is decompressed (a compressed body states its own decompressed size,
which a reader allocates first, so a few kilobytes could ask for gigabytes; uncompressed, a
message's size bounds what it holds), then validates the whole table (offsets in bounds, strings
valid UTF-8) so that nothing downstream reads past a buffer or decodes bad text.
"""

from __future__ import annotations

import struct

import pyarrow as pa


class CompressedBatch(ValueError):
    """A record batch of the stream has a compressed body."""


# what reading an unreadable stream raises
UNREADABLE = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError, ValueError, struct.error)


def _table_field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` starts (None: absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * index + 2 > size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _child_table(buf: bytes, at: int) -> int:
    return at + struct.unpack_from("<I", buf, at)[0]


def is_compressed(raw: bytes) -> bool:
    """Whether any record batch of the stream has a compressed body. A compressed body says how
    large it decompresses to, and a reader allocates that before anything can be checked, so a
    few kilobytes could ask for gigabytes: columnar messages must be uncompressed (the size limit
    on a message then bounds what it holds). Raises on a malformed stream."""
    reader = pa.ipc.MessageReader.open_stream(raw)
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return False
        if message is None:
            return False
        if message.type not in ("record batch", "dictionary"):
            continue
        meta = message.metadata.to_pybytes()
        root = _child_table(meta, 0)
        header_at = _table_field(meta, root, 2)  # Message.header
        if header_at is None:
            raise ValueError("a batch message without its header")
        header = _child_table(meta, header_at)
        if message.type == "dictionary":  # DictionaryBatch.data is a RecordBatch
            data_at = _table_field(meta, header, 1)
            if data_at is None:
                raise ValueError("a dictionary batch without its data")
            header = _child_table(meta, data_at)
        if _table_field(meta, header, 3) is not None:  # RecordBatch.compression
            return True


def read_table(raw: bytes) -> pa.Table:
    """The table of one IPC stream, validated; :class:`CompressedBatch` for a compressed one, and
    one of :data:`UNREADABLE` for anything else that is not a readable stream."""
    if is_compressed(raw):
        raise CompressedBatch("a record batch is compressed")
    with pa.ipc.open_stream(raw) as reader:
        table = reader.read_all()
    table.validate(full=True)
    return table


def write_table(table: pa.Table) -> bytes:
    """One uncompressed IPC stream holding ``table``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
