"""The impression/click joiner: impressions wait for their click or for the attribution window.

Per partition (impressions and clicks are both keyed by user id, so partition ``p`` of each
holds the same users): an impression is released when event time on ``p`` passes its time plus
the window, as a positive if its click came, else a negative; a click before its impression
waits for it, and one whose impression can no longer come is an *orphan*; late and duplicate
clicks change no label. Event time on ``p`` is the minimum of both topics' times (events and
the producer's watermarks), which makes the join a deterministic function of the partition's
events however the consumer interleaves the two topics. ``positives="click"`` releases a
positive at its click instead of at the window's end (fresher, with delayed-feedback bias).
Event times must be plausible (``max_ahead_s``), state is bounded per partition (``max_pending``:
the oldest is closed as *evicted*), and it round-trips through JSON into every checkpoint.
docs/joining.md has the full rules.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamrec.consumers.example_source import (
    Example,
    JoinCounts,
    ReleasedExamples,
    encode_time,
    example_from_row,
    example_row,
)
from streamrec.stream.event_columns import decode_columns, is_columnar
from streamrec.stream.events import decode_events, encode
from streamrec.stream.feature_blocks import RowRef, pack_features, unpack_features

INF = math.inf
# how far past its topic partition's time (or this machine's clock) an event may be (Joiner.implausible_time)
MAX_EVENT_TIME_AHEAD_S = 86_400.0


@dataclass
class _Partition:
    # OrderedDicts, not dicts: expiry pops from the front, which is O(1) here but degrades in a
    # plain dict that has had many entries deleted from its start.
    # impression_id -> [event_time, user_id, item_id, features, label]; insertion order is event-time
    # order because the producer sends each partition in event-time order.
    pending: OrderedDict[str, list[Any]] = field(default_factory=OrderedDict)
    # impression_id -> click event_time, for clicks read before their impression.
    early_clicks: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # impression_id -> [impression event_time, label], remembered for one more window so that a
    # late or duplicate click can be told from an orphan.
    closed: OrderedDict[str, list[Any]] = field(default_factory=OrderedDict)
    # [click event_time, impression_id] of pending positives, in arrival order (positives="click")
    clicked: list[list[Any]] = field(default_factory=list)
    impressions_time: float = -INF
    clicks_time: float = -INF

    @property
    def time(self) -> float:
        return min(self.impressions_time, self.clicks_time)


POSITIVE_RELEASES = ("click", "window")


def _due(queue: OrderedDict[str, Any], due: Callable[[Any], bool]) -> list[str]:
    """The keys of the longest prefix of ``queue`` whose values are ``due``."""
    keys = []
    for key, value in queue.items():
        if not due(value):
            break
        keys.append(key)
    return keys


class Joiner(ReleasedExamples):
    """Joins one consumer's impressions and clicks, per partition, by event time (module docstring)."""

    kind = "joiner"

    def __init__(self, window_s: float, max_pending: int = 1_000_000, positives: str = "window",
                 max_ahead_s: float = MAX_EVENT_TIME_AHEAD_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if positives not in POSITIVE_RELEASES:
            raise ValueError(f"positives must be one of {POSITIVE_RELEASES}, not {positives!r}")
        self.window_s = float(window_s)
        self.max_pending = int(max_pending)  # open impressions per partition
        self.max_ahead_s = float(max_ahead_s)
        self.positives = positives
        self._at_click = positives == "click"
        self.counts = JoinCounts()
        super().__init__()
        self._partitions: dict[int, _Partition] = {}
        self._open = 0

    def _part(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        return part

    # ------------------------------------------------------------------ input

    def impression(self, partition: int, event: dict[str, Any]) -> None:
        self._impression(self._part(partition), event["event_id"], float(event["event_time"]), event["user_id"],
                         event["item_id"], event["features"])

    def _impression(self, part: _Partition, impression_id: str, t: float, user_id: str, item_id: str,
                    features: dict[str, Any] | RowRef) -> None:
        if t > part.impressions_time:
            part.impressions_time = t
        if impression_id in part.pending or impression_id in part.closed:
            self.counts.duplicate_impressions += 1
            return
        self.counts.impressions += 1
        early = part.early_clicks.pop(impression_id, None)
        label = 0
        if early is not None:
            if early - t > self.window_s:
                self.counts.late_clicks += 1
            else:
                label = 1
                if self._at_click:
                    part.clicked.append([early, impression_id])
        part.pending[impression_id] = [t, user_id, item_id, features, label]
        self._open += 1
        if len(part.pending) > self.max_pending:
            self._evict_oldest(part)

    def click(self, partition: int, event: dict[str, Any]) -> None:
        self._click(self._part(partition), event["impression_id"], float(event["event_time"]))

    def _click(self, part: _Partition, impression_id: str, t: float) -> None:
        if t > part.clicks_time:
            part.clicks_time = t
        self.counts.clicks += 1
        held = part.pending.get(impression_id)
        if held is not None:
            if t - held[0] > self.window_s:
                self.counts.late_clicks += 1  # still open only because the other topic lags
            elif held[4]:
                self.counts.duplicate_clicks += 1
            else:
                held[4] = 1
                if self._at_click:
                    part.clicked.append([t, impression_id])
            return
        closed = part.closed.get(impression_id)
        if closed is not None:
            if closed[1] == 1:
                self.counts.duplicate_clicks += 1
            else:
                self.counts.late_clicks += 1
            return
        if impression_id in part.early_clicks:
            self.counts.duplicate_clicks += 1
        elif t < part.impressions_time:
            self.counts.orphan_clicks += 1  # the impressions here are past this click: none will come
        else:
            part.early_clicks[impression_id] = t

    def implausible_time(self, partition: int, topic_kind: str, event: dict[str, Any],
                         now: float | None = None) -> str | None:
        """Why an event's time cannot be right, or None. An event (or watermark) more than
        ``max_ahead_s`` past its topic partition's time, or past this machine's clock, would move
        the partition's time and close every open impression on it as a negative. (A forged final
        watermark with a plausible time cannot be told from the real one: only who may write the
        topics can stop it, docs/security.md.)"""
        return self._implausible(partition, topic_kind, float(event["event_time"]), time.time() if now is None else now)

    def _implausible(self, partition: int, topic_kind: str, t: float, now: float) -> str | None:
        part = self._partitions.get(partition)
        seen = -INF if part is None else (part.impressions_time if topic_kind == "impressions" else part.clicks_time)
        if t > now + self.max_ahead_s:
            return f"event_time {t:.0f} is {t - now:.0f} s ahead of this machine's clock (at most {self.max_ahead_s:g} s)"
        if math.isfinite(seen) and t > seen + self.max_ahead_s:
            return (f"event_time {t:.0f} is {t - seen:.0f} s ahead of partition {partition}'s {topic_kind} time "
                    f"(at most {self.max_ahead_s:g} s)")
        return None

    def offer(self, partition: int, topic_kind: str, event: dict[str, Any]) -> str | None:
        """Take one valid event read from partition ``partition`` of the ``topic_kind`` topic; return
        its type, or None when that type does not belong on that topic (the caller dead-letters it)."""
        etype = event["type"]
        if etype == "impression" and topic_kind == "impressions":
            self.impression(partition, event)
        elif etype == "click" and topic_kind == "clicks":
            self.click(partition, event)
        elif etype == "watermark":
            self.watermark(partition, topic_kind, event["event_time"], event.get("final", False))
        else:
            return None
        return etype

    def offer_message(self, partition: int, topic_kind: str, raw: bytes) -> tuple[dict[str, int], list[tuple[bytes, str]]]:
        """Decode one message (an event or an event batch, stream/events.py) and offer its valid
        events in order: how many of each type were taken, and the ``(bytes, reason)`` of every
        event to dead-letter (invalid, or of a type that does not belong on this topic)."""
        if is_columnar(raw):
            return self._offer_columns(partition, topic_kind, raw)
        taken = {"impression": 0, "click": 0, "watermark": 0}
        good, dead = decode_events(raw)
        now = time.time()
        for event in good:
            problem = self.implausible_time(partition, topic_kind, event, now)
            if problem is not None:
                self.counts.refused_times += 1
                dead.append((encode(event), problem))
                continue
            etype = self.offer(partition, topic_kind, event)
            if etype is None:
                dead.append((encode(event), f"{event['type']} event on the {topic_kind} topic"))
            else:
                taken[etype] += 1
        return taken, dead

    def _offer_columns(self, partition: int, topic_kind: str, raw: bytes) -> tuple[dict[str, int], list[tuple[bytes, str]]]:
        """:meth:`offer_message` for a columnar batch (stream/event_columns.py): the same rules
        event by event, over lists of ids and times; impressions keep a reference to their row of
        the batch's features instead of a dict."""
        taken = {"impression": 0, "click": 0, "watermark": 0}
        columns, dead = decode_columns(raw)
        if columns is None:
            return taken, dead
        kind = columns.kind
        if (kind == "impression") != (topic_kind == "impressions"):
            dead += [(encode(columns.event(k)), f"{kind} event on the {topic_kind} topic") for k in range(len(columns))]
            return taken, dead
        part = self._part(partition)
        now = time.time()
        clock_limit = now + self.max_ahead_s
        ahead = self.max_ahead_s
        ids, times, targets = columns.event_ids, columns.times, columns.targets
        is_impression = kind == "impression"
        block, users = columns.block, columns.user_ids
        if is_impression and self._all_new(part, ids, times, clock_limit):
            # the usual batch, whole: every time plausible, every id new, no eviction; what the
            # loop below would do event by event, at once
            refs = zip(itertools.repeat(block), range(len(ids)))
            part.pending.update(zip(ids, map(list, zip(times, users, targets, refs, itertools.repeat(0)))))
            early = part.early_clicks
            for k in ([k for k, i in enumerate(ids) if i in early] if early else ()):
                clicked_at = early.pop(ids[k])  # its click came first (_impression's rule)
                if clicked_at - times[k] > self.window_s:
                    self.counts.late_clicks += 1
                else:
                    part.pending[ids[k]][4] = 1
                    if self._at_click:
                        part.clicked.append([clicked_at, ids[k]])
            part.impressions_time = max(part.impressions_time, max(times))
            self.counts.impressions += len(ids)
            self._open += len(ids)
            taken[kind] = len(ids)
            return taken, dead
        refused = 0
        for k, t in enumerate(times):
            seen = part.impressions_time if is_impression else part.clicks_time
            if t > clock_limit or (t > seen + ahead and seen > -INF):
                dead.append((encode(columns.event(k)), self._implausible(partition, topic_kind, t, now)))
                refused += 1
            elif is_impression:
                self._impression(part, ids[k], t, users[k], targets[k], (block, k))
            else:
                self._click(part, targets[k], t)
        self.counts.refused_times += refused
        taken[kind] = len(times) - refused
        return taken, dead

    def _all_new(self, part: _Partition, ids: list[str], times: list[float], clock_limit: float) -> bool:
        """True when impressions ``ids`` at ``times`` would all be taken as new, with no eviction
        (a click that came before its impression may be waiting for any of them)."""
        if not ids or len(part.pending) + len(ids) > self.max_pending or max(times) > clock_limit:
            return False
        at = np.asarray(times)
        # each event is checked against the partition's time as the events before it left it
        seen = np.maximum.accumulate(np.concatenate(([part.impressions_time], at[:-1])))
        if not np.all((seen == -INF) | (at <= seen + self.max_ahead_s)):
            return False
        return (len(set(ids)) == len(ids) and part.pending.keys().isdisjoint(ids)
                and part.closed.keys().isdisjoint(ids))

    def watermark(self, partition: int, topic_kind: str, event_time: float, final: bool) -> None:
        part = self._part(partition)
        t = INF if final else float(event_time)
        if topic_kind == "impressions":
            part.impressions_time = max(part.impressions_time, t)
        elif topic_kind == "clicks":
            part.clicks_time = max(part.clicks_time, t)
        else:
            raise ValueError(f"topic_kind must be 'impressions' or 'clicks', not {topic_kind!r}")

    # ------------------------------------------------------------------ time

    def advance(self, partitions: Iterable[int] | None = None) -> None:
        """Close what event time allows on ``partitions`` (all if None)."""
        for p in (self._partitions if partitions is None else partitions):
            part = self._partitions.get(p)
            if part is None:
                continue
            now = part.time
            if part.clicked:
                released = 0
                for click_time, impression_id in part.clicked:
                    if click_time > now:
                        break
                    released += 1
                    held = part.pending.pop(impression_id, None)
                    if held is not None:  # else already closed (evicted)
                        self._open -= 1
                        self._close(part, impression_id, held, click_time)
                del part.clicked[:released]
            # each queue is in event-time order: what is due is a prefix, found in one pass
            limit, window = now - self.window_s, self.window_s
            expired = _due(part.pending, lambda held: held[0] < limit)
            if expired:
                pop = part.pending.pop
                held = [pop(impression_id) for impression_id in expired]
                self._open -= len(expired)
                # _close for each, at once: closed for one more window, counted, released in order
                part.closed.update(zip(expired, ([h[0], h[4]] for h in held)))
                positives = sum(h[4] for h in held)
                self.counts.positives += positives
                self.counts.negatives += len(held) - positives
                self._ready.extend([Example(i, h[1], h[2], h[3], h[4], h[0], h[0] + window)
                                    for i, h in zip(expired, held)])
            impressions_time = part.impressions_time
            orphans = _due(part.early_clicks, lambda t: t < impressions_time)
            for impression_id in orphans:
                del part.early_clicks[impression_id]
            self.counts.orphan_clicks += len(orphans)
            forget = now - 2 * self.window_s
            for impression_id in _due(part.closed, lambda closed: closed[0] < forget):
                del part.closed[impression_id]

    def finished(self, partitions: Iterable[int]) -> bool:
        """True when both topics of every partition in ``partitions`` saw a final watermark."""
        return all(p in self._partitions and self._partitions[p].time == INF for p in partitions)

    def watermark_time(self) -> float:
        """The joiner's event-time watermark: the slowest partition's time (-inf before any event)."""
        if not self._partitions:
            return -INF
        return min(part.time for part in self._partitions.values())

    # ------------------------------------------------------------------ output

    def _close(self, part: _Partition, impression_id: str, held: list[Any], label_time: float) -> None:
        t, user_id, item_id, features, label = held
        part.closed[impression_id] = [t, label]
        if label:
            self.counts.positives += 1
        else:
            self.counts.negatives += 1
        self._ready.append(Example(impression_id, user_id, item_id, features, label, t, label_time))

    def _evict_oldest(self, part: _Partition) -> None:
        """Close the partition's oldest open impression early; another partition's are not touched."""
        oldest_id = next(iter(part.pending))
        held = part.pending.pop(oldest_id)
        self._open -= 1
        self.counts.evicted += 1
        self._close(part, oldest_id, held, max(held[0], part.time))

    @property
    def open_impressions(self) -> int:
        return self._open

    @property
    def early_clicks(self) -> int:
        return sum(len(p.early_clicks) for p in self._partitions.values())

    # ------------------------------------------------------------------ checkpointing

    def state(self) -> dict[str, Any]:
        """Everything, as JSON-able values. Examples not yet taken are part of it (features that
        are references into columnar batches become the dicts the JSON path holds)."""
        ready = [example_row(e) for e in self.waiting()]
        pending = {p: [[k, *v] for k, v in part.pending.items()] for p, part in self._partitions.items()}
        # features at 4 of a pending row ([id, time, user, item, features, label]), at 3 of a ready one;
        # references into columnar batches become row numbers of one Arrow table (feature_rows)
        slots = [(row, 4) for rows in pending.values() for row in rows] + [(row, 3) for row in ready]
        packed, feature_rows = pack_features([row[at] for row, at in slots])
        for (row, at), features in zip(slots, packed):
            row[at] = features
        return {
            "feature_rows": feature_rows,
            "window_s": self.window_s,
            "max_pending": self.max_pending,
            "max_ahead_s": self.max_ahead_s,
            "positives": self.positives,
            "counts": asdict(self.counts),
            "ready": ready,
            "partitions": {
                str(p): {
                    "pending": pending[p],
                    "early_clicks": [[k, t] for k, t in part.early_clicks.items()],
                    "closed": [[k, *v] for k, v in part.closed.items()],
                    "clicked": part.clicked,
                    "impressions_time": encode_time(part.impressions_time),
                    "clicks_time": encode_time(part.clicks_time),
                }
                for p, part in self._partitions.items()
            },
        }

    def absorb(self, other: Joiner, partitions: set[int] | None, lead: bool) -> None:
        """Take over ``other``'s state of ``partitions`` (all if None); the ``lead`` also takes its
        examples waiting to be trained and its counts (a trainer's ranks, re-dealt: training
        those examples on any one rank is exactly once)."""
        for p, part in other._partitions.items():
            if partitions is None or p in partitions:
                self._partitions[p] = part
                self._open += len(part.pending)
        if lead:
            self._ready.extend(other.waiting())
            self.counts = JoinCounts(**{k: v + getattr(other.counts, k) for k, v in asdict(self.counts).items()})

    def empty_like(self) -> Joiner:
        return Joiner(self.window_s, self.max_pending, self.positives, self.max_ahead_s)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Joiner:
        joiner = cls(state["window_s"], state["max_pending"], state.get("positives", "window"),
                     state.get("max_ahead_s", MAX_EVENT_TIME_AHEAD_S))
        joiner.counts = JoinCounts(**state["counts"])
        pending = [row for data in state["partitions"].values() for row in data["pending"]]
        slots = [(row, 4) for row in pending] + [(row, 3) for row in state["ready"]]
        for (row, at), features in zip(slots, unpack_features([row[at] for row, at in slots],
                                                              state.get("feature_rows"))):
            row[at] = features
        joiner._ready, joiner._head = [example_from_row(row) for row in state["ready"]], 0
        for p, data in state["partitions"].items():
            part = _Partition(
                pending=OrderedDict((row[0], list(row[1:])) for row in data["pending"]),
                early_clicks=OrderedDict((k, t) for k, t in data["early_clicks"]),
                closed=OrderedDict((row[0], list(row[1:])) for row in data["closed"]),
                clicked=[list(row) for row in data.get("clicked", [])],
                impressions_time=float(data["impressions_time"]),
                clicks_time=float(data["clicks_time"]),
            )
            joiner._partitions[int(p)] = part
            joiner._open += len(part.pending)
        return joiner
