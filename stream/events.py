"""Event schemas, their JSON encoding, and validation at the edge.

Every event is one JSON object (UTF-8, encoded with orjson), schema version 1::

    impression  {"schema": 1, "type": "impression", "event_id": "i-42", "event_time": 1700000000.25,
                 "user_id": "u7", "item_id": "a19", "features": {"C3": "9f2a", "I1": 5, "I2": null}}
    click       {"schema": 1, "type": "click", "event_id": "c-42", "impression_id": "i-42",
                 "event_time": 1700000003.1, "user_id": "u7"}
    watermark   {"schema": 1, "type": "watermark", "event_time": 1700000100.0, "final": true}

Feature values carry their kind in their JSON type: a string is categorical, a number is
numeric (log-bucketed, optionally also a dense input), ``null`` is missing. ``event_time`` is
seconds since the Unix epoch. Impressions and clicks are keyed by ``user_id`` so that a user's
events share a partition. A ``watermark`` with ``final: true`` marks the end of a replay: a
trainer that sees it on a partition may close every open attribution window there.

A Kafka message holds one event, or a JSON array of events of one partition in event-time order
(an *event batch*, ARCHITECTURE.md "Contracts"). Invalid events are never raised:
:func:`decode_events` returns each bad event's reason, and consumers dead-letter it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

SCHEMA_VERSION = 1
EVENT_TYPES = ("impression", "click", "watermark")

# Bounds on what one event or message may hold: past them an event is dead-lettered with the
# reason, so no single event can make a worker hold or hash megabytes.
MAX_ID_CHARS = 256          # event_id, impression_id, user_id, item_id
MAX_FEATURES = 1024         # keys of an impression's feature map
MAX_EVENT_BYTES = 64 * 1024  # one event as JSON (bounds every string value in it)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # one Kafka message: larger ones are dead-lettered whole, unread
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024  # of a dead-lettered payload's bytes, what the record keeps
TYPICAL_EVENT_BYTES = 2048  # a batch averaging more per event is sized event by event (decode_events)

Event = dict[str, Any]
_PLAIN_TYPES = frozenset({str, int, type(None)})
_INF, _NEG_INF = float("inf"), float("-inf")


def impression(
    event_id: str, event_time: float, user_id: str, item_id: str, features: dict[str, Any]
) -> Event:
    return {
        "schema": SCHEMA_VERSION,
        "type": "impression",
        "event_id": event_id,
        "event_time": event_time,
        "user_id": user_id,
        "item_id": item_id,
        "features": features,
    }


def click(event_id: str, impression_id: str, event_time: float, user_id: str) -> Event:
    return {
        "schema": SCHEMA_VERSION,
        "type": "click",
        "event_id": event_id,
        "impression_id": impression_id,
        "event_time": event_time,
        "user_id": user_id,
    }


def watermark(event_time: float, final: bool = False) -> Event:
    return {"schema": SCHEMA_VERSION, "type": "watermark", "event_time": event_time, "final": final}


def encode(event: Event) -> bytes:
    return orjson.dumps(event)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonempty_str(event: Event, key: str) -> str | None:
    value = event.get(key)
    if not isinstance(value, str) or not value:
        return f"'{key}' must be a non-empty string"
    if len(value) > MAX_ID_CHARS:
        return f"'{key}' is {len(value)} characters; at most {MAX_ID_CHARS}"
    return None


def plainly_valid(event: Any) -> bool:
    """The common case in a few type checks: an impression or click whose fields have the right
    types and whose features are strings, integers or nulls. False means "check it properly"."""
    if type(event) is not dict or event.get("schema") != SCHEMA_VERSION:
        return False
    kind = event.get("type")
    t = event.get("event_time")
    if type(t) is not float and type(t) is not int or t != t or t in (_INF, _NEG_INF):
        return False
    if kind == "impression":
        features = event.get("features")
        event_id, user_id, item_id = event.get("event_id"), event.get("user_id"), event.get("item_id")
        return (type(event_id) is str and type(user_id) is str and type(item_id) is str and type(features) is dict
                and 0 < len(event_id) <= MAX_ID_CHARS and 0 < len(user_id) <= MAX_ID_CHARS
                and 0 < len(item_id) <= MAX_ID_CHARS and len(features) <= MAX_FEATURES
                and set(map(type, features.values())) <= _PLAIN_TYPES)
    if kind == "click":
        event_id, user_id, impression_id = event.get("event_id"), event.get("user_id"), event.get("impression_id")
        return (type(event_id) is str and type(user_id) is str and type(impression_id) is str
                and 0 < len(event_id) <= MAX_ID_CHARS and 0 < len(user_id) <= MAX_ID_CHARS
                and 0 < len(impression_id) <= MAX_ID_CHARS)
    return False


def validate(event: Any) -> str | None:
    """Return why ``event`` is not a valid schema-1 event, or ``None`` if it is."""
    if plainly_valid(event):
        return None
    if not isinstance(event, dict):
        return "event is not a JSON object"
    if event.get("schema") != SCHEMA_VERSION:
        return f"unsupported schema version {event.get('schema')!r} (expected {SCHEMA_VERSION})"
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        return f"unknown event type {kind!r}"
    event_time = event.get("event_time")
    if not _is_number(event_time) or event_time != event_time or abs(event_time) == float("inf"):
        return "'event_time' must be a finite number of seconds since the epoch"
    if kind == "watermark":
        return None if isinstance(event.get("final", False), bool) else "'final' must be a boolean"
    for key in ("event_id", "user_id"):
        problem = _nonempty_str(event, key)
        if problem:
            return problem
    if kind == "click":
        return _nonempty_str(event, "impression_id")
    problem = _nonempty_str(event, "item_id")
    if problem:
        return problem
    features = event.get("features")
    if not isinstance(features, dict):
        return "'features' must be an object"
    if len(features) > MAX_FEATURES:
        return f"'features' has {len(features)} keys; at most {MAX_FEATURES}"
    if set(map(type, features.values())) <= _PLAIN_TYPES:
        return None  # the common case, checked in C; the loop below finds the culprit otherwise
    for name, value in features.items():
        if value is not None and not isinstance(value, str) and not _is_number(value):
            return f"feature {name!r} must be a string, a number or null, not {type(value).__name__}"
        if isinstance(value, float) and (value != value or abs(value) == float("inf")):
            return f"feature {name!r} must be finite"
    return None


def encode_batch(batch: list[Event]) -> bytes:
    return orjson.dumps(batch)


def decode_events(raw: bytes) -> tuple[list[Event], list[tuple[bytes, str]]]:
    """Decode and validate one message, a single event or an event batch: ``(valid events in
    order, [(bad event's bytes, reason), ...])``. A message that is not JSON, neither an object
    nor an array, or larger than :data:`MAX_MESSAGE_BYTES`, is one bad event (its own bytes)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return [], [(raw, f"message is {len(raw)} bytes; at most {MAX_MESSAGE_BYTES}")]
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [], [(raw, f"not valid JSON: {exc}")]
    if type(decoded) is not list:
        problem = validate(decoded) or _too_large(len(raw))
        return ([], [(raw, problem)]) if problem else ([decoded], [])
    good: list[Event] = []
    bad: list[tuple[bytes, str]] = []
    # Sizing every event would cost a re-encoding each; a batch whose events are small on average
    # cannot hold one far over the limit, so only an unusually large batch is sized event by event.
    size_each = len(raw) > max(MAX_EVENT_BYTES, len(decoded) * TYPICAL_EVENT_BYTES)
    for event in decoded:
        problem = validate(event)  # which starts with the plainly_valid fast path
        if problem is None and size_each:
            problem = _too_large(len(orjson.dumps(event)))
        if problem:
            bad.append((orjson.dumps(event), problem))
        else:
            good.append(event)
    return good, bad


def _too_large(size: int) -> str | None:
    return f"event is {size} bytes as JSON; at most {MAX_EVENT_BYTES}" if size > MAX_EVENT_BYTES else None


def dead_letter(raw: bytes, reason: str, source: str) -> bytes:
    """The dead-letter record: the reason, where it came from, and the payload (its first
    :data:`MAX_DEAD_LETTER_PAYLOAD` bytes, with ``payload_bytes`` the whole size): as text, or
    base64 with ``payload_encoding: "base64"`` when it is not UTF-8 (a columnar batch)."""
    kept = raw[:MAX_DEAD_LETTER_PAYLOAD]
    record: dict[str, Any] = {"reason": reason, "source": source}
    try:
        record["payload"] = kept.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(kept) < len(raw) and exc.start >= len(kept) - 3:  # text cut inside its last character
            record["payload"] = kept[:exc.start].decode("utf-8", errors="replace")
        else:  # binary (a columnar batch): kept byte for byte
            record["payload"] = base64.b64encode(kept).decode("ascii")
            record["payload_encoding"] = "base64"
    if len(raw) > len(kept):
        record["payload_bytes"] = len(raw)
    return orjson.dumps(record)
