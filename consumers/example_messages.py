"""Messages on ``<ns>.examples``: labelled examples from the join stage (``streamrec join``).

One message carries a run of examples of one source partition, in the order the joiner released
them, as JSON::

    {"schema": 1, "type": "examples", "partition": 3, "final": false,
     "examples": [[impression_id, user_id, item_id, {features}, label, event_time, label_time], ...]}

``final: true`` (with no examples) says the partition's replay has ended: every impression of it
is in an earlier message. The message goes to the same partition index of ``<ns>.examples`` as
its source, so a user's examples stay in order and one reader per partition sees them in order.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamrec.consumers.example_source import Example, example_row

SCHEMA_VERSION = 1
MAX_EXAMPLES_PER_MESSAGE = 1000


def encode(partition: int, examples: list[Example]) -> bytes:
    return orjson.dumps({
        "schema": SCHEMA_VERSION, "type": "examples", "partition": partition, "final": False,
        "examples": [example_row(e) for e in examples],
    })


def encode_final(partition: int) -> bytes:
    return orjson.dumps({"schema": SCHEMA_VERSION, "type": "examples", "partition": partition, "final": True,
                         "examples": []})


def decode(raw: bytes) -> tuple[int, list[Example], bool]:
    """``(source partition, examples, final)``; ValueError with the reason for anything else."""
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
