"""Columnar event batches (stream/event_columns.py) against the JSON path they stand for: the same
events, the same dead letters and reasons, the same joins, and the same featurized batches."""

import random

import numpy as np
import orjson
import pyarrow as pa
import pytest

from streamrec.consumers.joiner import Joiner
from streamrec.models import spec_for
from streamrec.stream import events
from streamrec.stream.event_columns import decode_columns, encode_columns, is_columnar
from streamrec.stream.feature_blocks import feature_dicts, gather_columns, is_row_ref, unpack_features
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer

W = 10.0


def _impressions(n: int, start: int = 0, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for k in range(start, start + n):
        features = {"C1": f"c{rng.randrange(5)}", "I1": rng.choice([None, 0, 3, 17, 250]),
                    "I2": rng.choice([0.5, 2.25, -1.0, 7])}
        if rng.random() < 0.5:
            features["C2"] = rng.choice([None, "x", "y"])  # present in some events only
        out.append(events.impression(f"i{k}", 100.0 + k, f"u{rng.randrange(4)}", f"a{rng.randrange(6)}", features))
    return out


def _write(table: pa.Table, kind: str = "impression") -> bytes:
    table = table.replace_schema_metadata({b"streamrec": b"events/1", b"type": kind.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_columnar_batch_holds_the_events_it_was_made_from():
    batch = _impressions(40)
    raw = encode_columns(batch)
    assert raw is not None and is_columnar(raw) and not is_columnar(events.encode_batch(batch))
    columns, bad = decode_columns(raw)
    assert bad == [] and columns is not None and columns.kind == "impression"
    for k, event in enumerate(batch):
        expected = dict(event, features={**{"C2": None}, **event["features"]})
        got = columns.event(k)
        assert got == expected and list(got["features"]) == ["C1", "I1", "I2", "C2"]
    clicks = [events.click(f"c{k}", f"i{k}", 200.0 + k, "u1") for k in range(5)]
    decoded, bad = decode_columns(encode_columns(clicks))
    assert bad == [] and [decoded.event(k) for k in range(5)] == clicks


def test_values_that_cannot_be_columns_are_left_to_json():
    batch = _impressions(3)
    batch[1]["features"]["C1"] = 5  # a string in one event and a number in another
    assert encode_columns(batch) is None
    assert encode_columns([*_impressions(1), events.click("c", "i0", 1.0, "u")]) is None


def test_bad_rows_are_dead_lettered_alone_with_the_json_reason():
    n = 6
    table = pa.table({
        "event_id": pa.array(["e0", "", "e2", "e3", None, "e5"]),
        "event_time": pa.array([1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]),
        "user_id": pa.array(["u", "u", "u", "u" * 300, "u", "u"]),
        "item_id": pa.array(["a"] * n),
        "features": pa.StructArray.from_arrays(
            [pa.array(["x"] * n), pa.array([1.5, 2.0, 3.0, 4.0, 5.0, float("inf")]),
             pa.array([None, None, None, None, None, None], type=pa.bool_())], names=["C1", "I1", "B"]),
    })
    columns, bad = decode_columns(_write(table))
    assert columns is not None and columns.event_ids == ["e0"] and len(bad) == 5
    assert [r for _p, r in bad] == [
        "'event_id' must be a non-empty string", "'event_time' must be a finite number of seconds since the epoch",
        "'user_id' is 300 characters; at most 256", "'event_id' must be a non-empty string",
        "feature 'I1' must be finite"]
    # the payload is the event as JSON (where JSON has no infinity, null)
    assert [orjson.loads(p)["event_id"] for p, _r in bad] == ["", "e2", "e3", None, "e5"]
    # a value of a type JSON events cannot hold makes its row bad, not its whole batch
    flags = pa.table({"event_id": ["e0", "e1"], "event_time": [1.0, 2.0], "user_id": ["u", "u"], "item_id": ["a", "a"],
                      "features": pa.StructArray.from_arrays([pa.array([None, True])], names=["B"])})
    columns, bad = decode_columns(_write(flags))
    assert columns.event_ids == ["e0"] and bad[0][1] == "feature 'B' must be a string, a number or null, not bool"


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\xff\xff\xff" + b"garbage", "not a readable Arrow IPC stream"),
    (_write(pa.table({"event_id": ["e"], "event_time": [1.0], "user_id": ["u"]}), "click"), "without a 'impression_id'"),
    (_write(pa.table({"event_id": ["e"], "event_time": ["soon"], "user_id": ["u"], "impression_id": ["i"]}), "click"),
     "column 'event_time'"),
    (_write(pa.table({"event_id": ["e"], "event_time": [1.0], "user_id": ["u"], "item_id": ["a"],
                      "features": pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], names=["F", "F"])})),
     "names a field twice"),
    (_write(pa.table({"event_id": ["e"], "event_time": [1.0], "user_id": ["u"]}), "watermark"), "only impression"),
    (_write(pa.table({"event_id": ["e"], "event_time": [1.0], "user_id": ["u"], "item_id": ["a"],
                      "features": pa.StructArray.from_arrays([pa.array([1]) for _ in range(events.MAX_FEATURES + 1)],
                                                             names=[f"f{k}" for k in range(events.MAX_FEATURES + 1)])})),
     "fields; at most"),
])
def test_a_message_that_is_not_a_columnar_batch_is_one_bad_event(raw, reason):
    columns, bad = decode_columns(raw)
    assert columns is None and len(bad) == 1 and bad[0][0] == raw and reason in bad[0][1]


def _messages(seed: int, n: int, per_message: int) -> list[tuple[int, str, list[dict]]]:
    """A random two-partition stream (early, late, orphan and duplicate clicks, duplicate
    impressions) as messages: (partition, topic kind, events), watermarks alone."""
    rng = random.Random(seed)
    out = []
    for p in (0, 1):
        imps = _impressions(n, start=p * n, seed=seed + p)
        for k, event in enumerate(imps):
            event["event_time"] = k * 0.5
        imps += [dict(imps[k]) for k in rng.sample(range(n), 5)]  # duplicates, later
        imps.sort(key=lambda e: e["event_time"])
        clicks = [events.click(f"c{e['event_id']}", e["event_id"], e["event_time"] + rng.uniform(-2, 1.5 * W),
                               e["user_id"]) for e in imps if rng.random() < 0.3]
        clicks += [events.click("cx", f"none{k}", rng.uniform(0, n / 2), "u") for k in range(3)]
        clicks.sort(key=lambda e: e["event_time"])
        streams = {"impressions": imps, "clicks": clicks}
        at = {"impressions": 0, "clicks": 0}
        messages = []
        while at["impressions"] < len(imps) or at["clicks"] < len(clicks):
            kind = rng.choice([k for k in streams if at[k] < len(streams[k])])
            size = rng.randint(1, per_message)
            messages.append((p, kind, streams[kind][at[kind]:at[kind] + size]))
            at[kind] = min(at[kind] + size, len(streams[kind]))
            if rng.random() < 0.1:
                messages.append((p, kind, [events.watermark(streams[kind][at[kind] - 1]["event_time"])]))
        out.append(messages + [(p, kind, [events.watermark(0.0, final=True)]) for kind in streams])
    return _interleaved(out, rng)


def _interleaved(per_partition: list[list], rng: random.Random) -> list:
    """The partitions' messages interleaved at random, each partition's in its own order."""
    queues = [list(reversed(messages)) for messages in per_partition]
    out = []
    while any(queues):
        out.append(rng.choice([q for q in queues if q]).pop())
    return out


def _present(features: dict) -> dict:
    """A feature dict without its nulls: a columnar row holds a null for every field its batch has."""
    return {k: v for k, v in features.items() if v is not None}


def _released(joiner: Joiner) -> list[list]:
    examples = joiner.take()
    return [[e.impression_id, e.user_id, e.item_id, _present(f), e.label, e.event_time, e.label_time]
            for e, f in zip(examples, feature_dicts([e.features for e in examples]))]


def _state(joiner: Joiner) -> dict:
    """The joiner's checkpoint with every feature as a dict without nulls (a columnar joiner's
    checkpoint holds its references as rows of one Arrow table, ``feature_rows``)."""
    state = orjson.loads(orjson.dumps(joiner.state()))
    slots = [(row, 4) for part in state["partitions"].values() for row in part["pending"]]
    slots += [(row, 3) for row in state["ready"]]
    values = feature_dicts(unpack_features([row[at] for row, at in slots], state.pop("feature_rows")))
    for (row, at), features in zip(slots, values):
        row[at] = _present(features)
    return state


@pytest.mark.parametrize("positives", ["window", "click"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_joiner_makes_the_same_examples_of_columnar_and_json_batches(seed, positives):
    messages = _messages(seed, 120, per_message=9)
    results = {}
    for encoding in ("json", "columns"):
        joiner = Joiner(W, positives=positives, max_pending=60)
        released, dead = [], []
        for index, (p, kind, batch) in enumerate(messages):
            if index == len(messages) // 2:  # a restart from the checkpointed state
                joiner = Joiner.from_state(orjson.loads(orjson.dumps(joiner.state())))
            columnar = encoding == "columns" and batch[0]["type"] != "watermark"
            raw = encode_columns(batch) if columnar else events.encode_batch(batch)
            assert raw is not None
            taken, bad = joiner.offer_message(p, kind, raw)
            dead += [(orjson.loads(b), r) for b, r in bad]
            joiner.advance([p])
            released += _released(joiner)
        results[encoding] = (released, dead, joiner.counts, _state(joiner))
    assert results["json"] == results["columns"]
    released, _dead, counts, _unused = results["columns"]
    assert counts.duplicate_impressions == 10 and counts.orphan_clicks >= 3 and counts.positives > 10
    assert len(released) == counts.positives + counts.negatives


def test_a_columnar_batch_on_the_wrong_topic_or_too_far_ahead_is_dead_lettered_event_by_event():
    joiner = Joiner(W, max_ahead_s=100.0)
    batch = _impressions(4)
    taken, dead = joiner.offer_message(0, "clicks", encode_columns(batch))
    assert taken["impression"] == 0 and [r for _b, r in dead] == ["impression event on the clicks topic"] * 4
    batch[2]["event_time"] = 10_000.0  # far past the events before it
    taken, dead = joiner.offer_message(0, "impressions", encode_columns(batch))
    assert taken["impression"] == 3 and joiner.counts.refused_times == 1
    assert orjson.loads(dead[0][0])["event_id"] == "i2" and "ahead of partition 0's impressions time" in dead[0][1]


def _joined(batches: list[list[dict]]) -> list:
    joiner = Joiner(W)
    for batch in batches:
        joiner.offer_message(0, "impressions", encode_columns(batch))
    joiner.watermark(0, "impressions", 0.0, True)
    joiner.watermark(0, "clicks", 0.0, True)
    joiner.advance()
    return joiner.take()


@pytest.mark.parametrize("keyed", [False, True])
def test_gathered_columns_featurize_as_the_rows_they_came_from(keyed):
    # blocks with different fields (C2 in the second only) and numbers as ints in one, floats in another
    first, second = _impressions(30, seed=1), _impressions(25, start=30, seed=2)
    for e in first:
        e["features"].pop("C2", None)
        e["features"]["I1"] = 3
    examples = _joined([first, second, _impressions(8, start=55, seed=3)])
    assert all(is_row_ref(e.features) for e in examples)
    dicts = feature_dicts([e.features for e in examples])
    spec = spec_for("wide_deep", SpecOptions(keyed=keyed, crosses=(("C1", "C2"),)).infer(dicts[40:]))
    featurizer = Featurizer(spec)
    labels = np.array([e.label for e in examples], dtype=np.int8)
    times = np.array([e.event_time for e in examples])
    chunk = gather_columns(spec, [e.features for e in examples], labels, times)
    assert chunk is not None
    by_columns = featurizer.build_columns(chunk)
    by_rows = Featurizer(spec).build([e.user_id for e in examples], [e.item_id for e in examples], dicts,
                                      labels.tolist(), None, times.tolist())
    for name in ("ids", "cross_ids", "dense", "labels", "event_time"):
        assert np.array_equal(getattr(by_columns, name).numpy(), getattr(by_rows, name).numpy()), name


def test_columns_whose_kind_differs_from_the_spec_are_left_to_the_row_path():
    batch = _impressions(10)
    examples = _joined([batch])
    spec = spec_for("lr", SpecOptions().infer([{"C1": "x", "I1": "not a number", "I2": 1.0}]))
    assert gather_columns(spec, [e.features for e in examples], np.zeros(10, np.int8), None) is None


def test_examples_of_columnar_batches_travel_to_the_trainers_as_columns():
    from streamrec.consumers import example_messages

    examples = _joined([_impressions(12), _impressions(9, start=12, seed=5)])
    raw = example_messages.encode(3, examples)
    assert is_columnar(raw)
    partition, decoded, final = example_messages.decode(raw)
    assert partition == 3 and not final and all(is_row_ref(e.features) for e in decoded)
    assert [(e.impression_id, e.user_id, e.item_id, e.label, e.event_time, e.label_time) for e in decoded] == \
        [(e.impression_id, e.user_id, e.item_id, e.label, e.event_time, e.label_time) for e in examples]
    assert feature_dicts([e.features for e in decoded]) == feature_dicts([e.features for e in examples])
    # examples holding dicts (a JSON producer, a resumed checkpoint) travel as JSON, as before
    plain = example_messages.encode(3, [*examples[:2]])
    assert is_columnar(plain)
    examples[0].features = feature_dicts([examples[0].features])[0]
    assert not is_columnar(example_messages.encode(3, examples[:2]))
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        table = pa.ipc.open_stream(raw).read_all()
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array([2] * len(table), pa.int8()))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        example_messages.decode(sink.getvalue().to_pybytes())


def test_strings_hashed_from_arrow_buffers_hash_as_python_strings():
    from streamrec.stream.featurizer import hash_arrow_strings, hash_strings

    ascii_values = ["", "a", "68fd1e64", "x" * 64, "tab\tand nul\x00inside", "None"]
    array = pa.array(ascii_values, type=pa.string())
    for seed in (0, 7):
        assert np.array_equal(hash_arrow_strings(array, seed), hash_strings(ascii_values, seed))
        assert np.array_equal(hash_arrow_strings(array.slice(2, 3), seed), hash_strings(ascii_values[2:5], seed))
        assert np.array_equal(hash_arrow_strings(pa.array(ascii_values, type=pa.large_string()), seed),
                              hash_strings(ascii_values, seed))
    # not ASCII, or longer than the fixed-width array: left to the Python strings' path
    assert hash_arrow_strings(pa.array(["café"]), 0) is None
    assert hash_arrow_strings(pa.array(["y" * 65]), 0) is None


def test_columns_of_any_text_featurize_as_their_rows():
    batch = _impressions(20)
    for k, e in enumerate(batch):
        e["features"]["C1"] = ["café", "naïve", "x" * 80, "plain"][k % 4]
    examples = _joined([batch])
    dicts = feature_dicts([e.features for e in examples])
    spec = spec_for("wide_deep", SpecOptions().infer(dicts))
    labels = np.array([e.label for e in examples], dtype=np.int8)
    chunk = gather_columns(spec, [e.features for e in examples], labels, None)
    by_columns = Featurizer(spec).build_columns(chunk)
    by_rows = Featurizer(spec).build([e.user_id for e in examples], [e.item_id for e in examples], dicts,
                                      labels.tolist())
    assert np.array_equal(by_columns.ids.numpy(), by_rows.ids.numpy())


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_batch_is_refused_before_it_is_decompressed(codec):
    # a few kilobytes that would decompress to megabytes (to gigabytes, scaled up)
    table = pa.table({"event_id": ["e" * 200_000] * 20, "event_time": [1.0] * 20, "user_id": ["u"] * 20,
                      "impression_id": ["i"] * 20}).replace_schema_metadata({b"streamrec": b"events/1",
                                                                             b"type": b"click"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write_table(table)
    raw = sink.getvalue().to_pybytes()
    assert len(raw) < 100_000
    columns, bad = decode_columns(raw)
    assert columns is None and len(bad) == 1 and "uncompressed" in bad[0][1]
    from streamrec.consumers import example_messages

    with pytest.raises(ValueError, match="uncompressed"):
        example_messages.decode(raw)
    # the same batch uncompressed is read (and its over-long ids dead-lettered row by row)
    plain = pa.BufferOutputStream()
    with pa.ipc.new_stream(plain, table.schema) as writer:
        writer.write_table(table)
    columns, bad = decode_columns(plain.getvalue().to_pybytes())
    assert columns is not None and len(bad) == 20


def test_a_checkpoint_keeps_columnar_features_as_one_arrow_table():
    from streamrec.consumers.example_queue import ExampleQueue

    joiner = Joiner(W)
    joiner.offer_message(0, "impressions", encode_columns(_impressions(30)))
    joiner.watermark(0, "impressions", 100.0 + 20, False)
    joiner.watermark(0, "clicks", 100.0 + 20, False)
    joiner.advance()  # some released (ready), the rest pending
    state = orjson.loads(orjson.dumps(joiner.state()))
    assert state["feature_rows"] and joiner.ready and joiner.open_impressions
    restored = Joiner.from_state(orjson.loads(orjson.dumps(state)))
    assert all(is_row_ref(e.features) for e in restored.waiting())
    assert _state(restored) == _state(joiner)
    assert feature_dicts([e.features for e in restored.take()]) == feature_dicts([e.features for e in joiner.take()])
    # a row number outside the checkpoint's table is refused, not read
    state["partitions"]["0"]["pending"][0][4] = 10_000
    with pytest.raises(ValueError, match="feature row 10000"):
        Joiner.from_state(state)
    # the join stage's examples, queued in a trainer, checkpoint the same way
    queue = ExampleQueue()
    queue.add(0, _joined([_impressions(9)]), final=False)
    again = ExampleQueue.from_state(orjson.loads(orjson.dumps(queue.state())))
    assert all(is_row_ref(e.features) for e in again.waiting())
    assert feature_dicts([e.features for e in again.take()]) == feature_dicts([e.features for e in queue.take()])
