from __future__ import annotations

import base64

import orjson
import pytest

from streamrec.stream import events


def _impression(**changes: object) -> dict:
    event = events.impression("i-1", 1.7e9, "u1", "a1", {"C1": "x", "I1": 3, "I2": None, "F": 0.5})
    event.update(changes)
    return event


def _decode_one(raw: bytes) -> tuple[dict | None, str | None]:
    """A message meant to hold one event: the event, or the first reason it is not one."""
    good, bad = events.decode_events(raw)
    return (good[0], None) if good and not bad else (None, bad[0][1])


def test_valid_events_round_trip() -> None:
    for event in (_impression(), events.click("c-1", "i-1", 1.7e9 + 2, "u1"), events.watermark(1.7e9, True)):
        decoded, reason = _decode_one(events.encode(event))
        assert reason is None
        assert decoded == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (events.encode(_impression(schema=2)), "unsupported schema version"),
        (events.encode(_impression(type="view")), "unknown event type"),
        (events.encode(_impression(event_time="yesterday")), "event_time"),
        (events.encode(_impression(user_id="")), "user_id"),
        (events.encode(_impression(item_id=7)), "item_id"),
        (events.encode(_impression(features=[1])), "'features' must be an object"),
        (events.encode(_impression(features={"C1": {"nested": 1}})), "feature 'C1'"),
        (events.encode(_impression(features={"C1": True})), "feature 'C1'"),
        (events.encode({**events.click("c", "i", 1.0, "u"), "impression_id": None}), "impression_id"),
    ],
)
def test_invalid_events_give_a_reason(raw: bytes, reason: str) -> None:
    event, problem = _decode_one(raw)
    assert event is None
    assert problem is not None and reason in problem


def test_nan_feature_is_invalid() -> None:
    assert "finite" in (events.validate(_impression(features={"F": float("nan")})) or "")


def test_dead_letter_record_keeps_payload_and_reason() -> None:
    record = orjson.loads(events.dead_letter(b"{broken", "not valid JSON", "impressions"))
    assert record["reason"] == "not valid JSON"
    assert record["source"] == "impressions"
    assert record["payload"] == "{broken" and "payload_encoding" not in record
    # bytes that are not text (a columnar batch) are kept byte for byte, as base64
    binary = orjson.loads(events.dead_letter(b"\xff\xff\xff\xff\x00broken", "not readable", "impressions"))
    assert binary["payload_encoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\xff\xff\xff\x00broken"
    # text cut at the limit inside a character stays text
    cut = orjson.loads(events.dead_letter(("é" * events.MAX_DEAD_LETTER_PAYLOAD).encode(), "too big", "impressions"))
    assert "payload_encoding" not in cut and cut["payload"] == "é" * (events.MAX_DEAD_LETTER_PAYLOAD // 2)


def test_an_event_batch_decodes_to_its_events_in_order_and_names_each_bad_one() -> None:
    click = events.click("c-1", "i-1", 1.7e9 + 2, "u1")
    bad = _impression(user_id="")
    raw = events.encode_batch([_impression(), bad, click, 7, events.watermark(1.7e9)])
    good, problems = events.decode_events(raw)
    assert good == [_impression(), click, events.watermark(1.7e9)]
    assert [(orjson.loads(r), reason.split(" ")[0]) for r, reason in problems] == [(bad, "'user_id'"), (7, "event")]
    assert events.decode_events(events.encode_batch([])) == ([], [])


def test_a_single_event_message_still_decodes() -> None:
    assert events.decode_events(events.encode(_impression())) == ([_impression()], [])
    good, [(raw, reason)] = events.decode_events(b"{not json")
    assert good == [] and raw == b"{not json" and "not valid JSON" in reason
    assert "not a JSON object" in events.decode_events(b"5")[1][0][1]
