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

from typing import Any

import orjson

SCHEMA_VERSION = 1
EVENT_TYPES = ("impression", "click", "watermark")

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
        return (type(event.get("event_id")) is str and type(event.get("user_id")) is str
                and type(event.get("item_id")) is str and type(features) is dict
                and bool(event["event_id"]) and bool(event["user_id"]) and bool(event["item_id"])
                and set(map(type, features.values())) <= _PLAIN_TYPES)
    if kind == "click":
        return (type(event.get("event_id")) is str and type(event.get("user_id")) is str
                and type(event.get("impression_id")) is str
                and bool(event["event_id"]) and bool(event["user_id"]) and bool(event["impression_id"]))
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
    order, [(bad event's bytes, reason), ...])``. A message that is not JSON, or neither an
    object nor an array, is one bad event (its own bytes)."""
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [], [(raw, f"not valid JSON: {exc}")]
    if type(decoded) is not list:
        problem = validate(decoded)
        return ([], [(raw, problem)]) if problem else ([decoded], [])
    good: list[Event] = []
    bad: list[tuple[bytes, str]] = []
    for event in decoded:
        problem = validate(event)  # which starts with the plainly_valid fast path
        if problem:
            bad.append((orjson.dumps(event), problem))
        else:
            good.append(event)
    return good, bad


def dead_letter(raw: bytes, reason: str, source: str) -> bytes:
    """The dead-letter record: the reason, where it came from, and the payload as text."""
    return orjson.dumps(
        {"reason": reason, "source": source, "payload": raw.decode("utf-8", errors="replace")}
    )
