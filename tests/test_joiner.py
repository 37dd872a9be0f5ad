"""The impression/click joiner, driven directly (no broker)."""

import random

import orjson
import pytest

from streamrec.consumers.joiner import Joiner
from streamrec.stream import events

W = 10.0


def imp(n: int, t: float, user: str = "u") -> dict:
    return events.impression(f"i{n}", t, user, f"a{n}", {"C3": str(n % 3)})


def clk(n: int, t: float, user: str = "u") -> dict:
    return events.click(f"c{n}", f"i{n}", t, user)


def feed(joiner: Joiner, partition: int, kind: str, event: dict) -> None:
    """One item: "i" impression, "c" click, "w" watermark ({"kind", "time", "final"}); then advance."""
    if kind == "i":
        joiner.impression(partition, event)
    elif kind == "c":
        joiner.click(partition, event)
    else:
        joiner.watermark(partition, event["kind"], event["time"], event["final"])
    joiner.advance([partition])


def drive(joiner: Joiner, items: list[tuple[str, dict]], partition: int = 0) -> None:
    for kind, event in items:
        feed(joiner, partition, kind, event)


def wm(kind: str, t: float, final: bool = False) -> tuple[str, dict]:
    return "w", {"kind": kind, "time": t, "final": final}


def labels(joiner: Joiner) -> dict[str, int]:
    return {e.impression_id: e.label for e in joiner.take()}


def test_click_within_window_is_positive_and_silence_is_negative():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 1.0)), ("c", clk(1, 3.0))])
    assert j.take() == []  # nothing is released before its window has passed on both topics
    drive(j, [("i", imp(3, 12.0)), wm("clicks", 12.0)])
    assert labels(j) == {"i1": 1, "i2": 1 - 1}
    assert j.counts.positives == 1 and j.counts.negatives == 1
    assert j.open_impressions == 1


def test_release_waits_for_the_slower_topic():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 50.0))])  # impressions far ahead, clicks not read yet
    assert j.take() == []
    drive(j, [("c", clk(1, 9.0))])  # the click arrives late in wall time but within the window
    drive(j, [wm("clicks", 50.0)])
    assert labels(j) == {"i1": 1}


def test_click_before_its_impression_waits_for_it():
    j = Joiner(W)
    drive(j, [("c", clk(1, 2.0)), ("i", imp(1, 0.0)), wm("impressions", 20.0), wm("clicks", 20.0)])
    assert labels(j) == {"i1": 1}
    assert j.counts.orphan_clicks == 0


def test_orphan_late_and_duplicate_clicks_are_counted_not_labelled():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 0.5)), ("c", clk(2, 1.0)), ("c", clk(2, 1.5)),
              ("c", clk(9, 2.0)),  # no impression i9 at or before t=2 and impressions are at 0.5: waits
              ("i", imp(3, 5.0)),  # impressions pass t=2: i9 cannot come any more
              wm("clicks", 11.0), ("i", imp(4, 11.0)),
              ("c", clk(1, 12.0))])  # i1 was released as a negative at t=11
    out = labels(j)
    assert out == {"i1": 0, "i2": 1}
    assert j.counts.orphan_clicks == 1
    assert j.counts.duplicate_clicks == 1
    assert j.counts.late_clicks == 1
    assert j.counts.positives == 1


def test_positive_is_released_when_event_time_reaches_its_click():
    j = Joiner(W, positives="click")
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 1.0)), ("c", clk(2, 3.0))])
    assert j.take() == []  # the impressions topic is at t=1, before the click: it must wait
    drive(j, [("i", imp(3, 3.5))])
    [example] = j.take()
    assert (example.impression_id, example.label, example.label_time) == ("i2", 1, 3.0)
    assert j.open_impressions == 2
    drive(j, [wm("clicks", 11.0), ("i", imp(4, 11.0))])
    [negative] = j.take()
    assert (negative.impression_id, negative.label, negative.label_time) == ("i1", 0, W)
    drive(j, [("c", clk(2, 11.5))])
    assert j.counts.duplicate_clicks == 1 and j.take() == []


def test_positives_at_window_end_keep_impression_order():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 1.0)), ("c", clk(2, 3.0)), ("i", imp(3, 3.5))])
    assert j.take() == []
    drive(j, [wm("clicks", 12.0), ("i", imp(4, 12.0))])
    assert [(e.impression_id, e.label) for e in j.take()] == [("i1", 0), ("i2", 1)]


def test_final_watermarks_release_everything():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(2, 1.0)), ("c", clk(2, 2.0))])
    assert not j.finished([0])
    drive(j, [wm("impressions", 1.0, final=True)])
    assert j.take() == [] and not j.finished([0])
    drive(j, [wm("clicks", 2.0, final=True)])
    assert j.finished([0]) and not j.finished([0, 1])
    assert labels(j) == {"i1": 0, "i2": 1}
    assert j.open_impressions == 0


def test_state_is_bounded_by_evicting_the_oldest():
    j = Joiner(W, max_pending=3)
    drive(j, [("i", imp(n, float(n) / 10)) for n in range(5)])
    assert j.open_impressions == 3
    assert [e.impression_id for e in j.take()] == ["i0", "i1"]
    assert j.counts.evicted == 2


def test_duplicate_impressions_are_ignored():
    j = Joiner(W)
    drive(j, [("i", imp(1, 0.0)), ("i", imp(1, 0.0))])
    assert j.counts.duplicate_impressions == 1 and j.open_impressions == 1


def _random_stream(seed: int, n: int) -> list[tuple[int, str, dict]]:
    """(partition, kind, event) in a per-partition event-time order, two partitions interleaved at random."""
    rng = random.Random(seed)
    per_partition: dict[int, list[tuple[str, dict]]] = {0: [], 1: []}
    clicks: dict[int, list[tuple[float, dict]]] = {0: [], 1: []}
    for k in range(n):
        p, t = k % 2, k * 0.5
        per_partition[p].append(("i", imp(k, t, user=f"u{p}")))
        if rng.random() < 0.3:
            clicks[p].append((t + rng.uniform(0, 1.5 * W), clk(k, 0.0, user=f"u{p}")))
    out = []
    for p in (0, 1):
        imps = per_partition[p]
        cl = sorted(clicks[p], key=lambda x: x[0])
        for tc, event in cl:
            event["event_time"] = tc
        # the two topics of a partition are read at independent speeds: interleave them at random
        stream, a, b = [], 0, 0
        while a < len(imps) or b < len(cl):
            if b >= len(cl) or (a < len(imps) and rng.random() < 0.6):
                stream.append((p, "i", imps[a][1]))
                a += 1
            else:
                stream.append((p, "c", cl[b][1]))
                b += 1
        stream += [(p, "w", {"kind": "impressions", "time": 0, "final": True}),
                   (p, "w", {"kind": "clicks", "time": 0, "final": True})]
        out.append(stream)
    merged, i, j = [], 0, 0
    while i < len(out[0]) or j < len(out[1]):
        if j >= len(out[1]) or (i < len(out[0]) and rng.random() < 0.5):
            merged.append(out[0][i])
            i += 1
        else:
            merged.append(out[1][j])
            j += 1
    return merged


def _run(stream: list[tuple[int, str, dict]], positives: str,
         snapshot_at: int | None = None) -> tuple[dict[str, int], Joiner]:
    joiner = Joiner(W, positives=positives)
    released: dict[str, int] = {}
    for index, (p, kind, event) in enumerate(stream):
        if snapshot_at is not None and index == snapshot_at:
            # a restart: everything continues from the serialised state
            joiner = Joiner.from_state(orjson.loads(orjson.dumps(joiner.state())))
        feed(joiner, p, kind, event)
        for e in joiner.take(7):
            assert e.impression_id not in released
            released[e.impression_id] = e.label
    for e in joiner.take():
        assert e.impression_id not in released
        released[e.impression_id] = e.label
    return released, joiner


@pytest.mark.parametrize("positives", ["click", "window"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_do_not_depend_on_interleaving_or_restarts(seed, positives):
    stream = _random_stream(seed, 400)
    truth = {}
    for _p, kind, event in stream:
        if kind == "i":
            truth.setdefault(event["event_id"], 0)
    for _p, kind, event in stream:
        if kind == "c":
            # within the window: a positive; beyond it: late, the impression stays negative
            imp_time = int(event["impression_id"][1:]) * 0.5
            if event["event_time"] - imp_time <= W:
                truth[event["impression_id"]] = 1
    plain, joiner = _run(stream, positives)
    assert plain == truth
    assert joiner.finished([0, 1]) and joiner.open_impressions == 0
    restarted, _ = _run(stream, positives, snapshot_at=len(stream) // 2)
    assert restarted == truth
