"""Recent behaviour kept from the stream itself for sequence models: each user's clicked items
(DIN, DIEN, YouTube DNN), or each item's interactions (item-based AutoRec).

An example is featurised with the clicks its user made *before* it was learned, and its own
click (if any) is added only after, so no label leaks into its own input. Bounded twice: the
last ``length`` items per user, and at most ``max_users`` users (the least recently active one is
forgotten first). With ``ttl_seconds`` (the model's ``tables.ttl_seconds``, as its keyed tables
expire rows) a key not seen in any example (clicked or not) for more than that much event time
before the newest example is forgotten whole, from the least recently active end. The state is plain JSON
and goes into every version with the joiner's, so a resumed worker continues with the same
histories, clock and all.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamrec.stream.errors import ConfigError


def _check_ttl(ttl_seconds: float) -> float:
    ttl = float(ttl_seconds)
    if not 0.0 <= ttl < math.inf:
        raise ConfigError(f"tables.ttl_seconds must be a finite number >= 0 (0: never expire), not {ttl_seconds}")
    return ttl


class UserHistory:
    """The last ``length`` entries per key (a user, or an item), at most ``max_users`` keys, the least
    recently active forgotten first; with ``ttl_seconds``, also every key last active (an entry
    added, or :meth:`touch`) that much event time before the newest time seen (``clock``)."""

    def __init__(self, length: int, max_users: int = 1_000_000, ttl_seconds: float = 0.0) -> None:
        if length < 1 or max_users < 1:
            raise ValueError("length and max_users must be positive")
        self.length = length
        self.max_users = max_users
        self.ttl_seconds = _check_ttl(ttl_seconds)
        self._users: OrderedDict[str, deque[Any]] = OrderedDict()  # entries: ids, or [item, value, ...]
        # with a ttl: each key's last activity in event time, and the newest event time seen; a
        # late event never turns the clock back
        self._times: dict[str, float] = {}
        self.clock = -math.inf
        self.expired = 0  # keys forgotten for their age

    def of(self, users: Sequence[str]) -> list[list[Any]]:
        """The current history of each user (oldest first)."""
        get = self._users.get
        return [list(h) if (h := get(user)) is not None else [] for user in users]

    def entries(self, user: str) -> list[Any]:
        """One key's history (oldest first); empty if unknown."""
        return list(self._users.get(user, ()))

    def add_clicks(self, users: Sequence[str], items: Sequence[Any], labels: Sequence[int]) -> None:
        """Record the clicked (label 1) items, in order."""
        self.add([u for u, label in zip(users, labels) if label], [i for i, label in zip(items, labels) if label])

    def add(self, users: Sequence[str], items: Sequence[Any], times: Sequence[float] | None = None,
            newest: float | None = None) -> list[str]:
        """Record every pair, in order (``times``: each entry's event time, needed with a ttl), move
        the clock to ``newest`` (the batch's newest event time, clicked or not) and forget what is
        then too old; return the keys forgotten, to make room or for their age."""
        timed = self.ttl_seconds > 0
        if timed and (times is None or newest is None):
            raise ConfigError("tables.ttl_seconds expires histories by event time, but these examples carry none "
                              "(pass each example's time)")
        forgotten = []
        for k, (user, item) in enumerate(zip(users, items)):
            history = self._users.get(user)
            if history is None:
                history = self._users[user] = deque(maxlen=self.length)
                if len(self._users) > self.max_users:
                    gone = self._users.popitem(last=False)[0]
                    self._times.pop(gone, None)
                    forgotten.append(gone)
            else:
                self._users.move_to_end(user)
            history.append(item)
            if timed:
                at = _event_time(times[k])  # type: ignore[index]
                self._times[user] = max(self._times.get(user, at), at)
        if timed:
            self.clock = max(self.clock, _event_time(newest))  # type: ignore[arg-type]
            forgotten += self._expire()
        return forgotten

    def touch(self, keys: Sequence[str], times: Sequence[float]) -> None:
        """With a ttl: the held ``keys`` were active at ``times`` (examples without an entry to add:
        a user shown an item and not clicking is still active). Without one this does nothing, so
        the least recently *clicking* user is the one forgotten first, as always."""
        if not self.ttl_seconds:
            return
        users, moments = self._users, self._times
        for key, at in zip(keys, times):
            if key in users:
                users.move_to_end(key)
                t = _event_time(at)
                if t > moments.get(key, -math.inf):
                    moments[key] = t

    def _expire(self) -> list[str]:
        # Keys are in order of their last activity, so the idle ones are a prefix; one last active
        # before a key in front of it (batches interleave partitions) waits for that one.
        limit = self.clock - self.ttl_seconds
        gone = []
        while self._users:
            user = next(iter(self._users))
            if self._times.get(user, self.clock) >= limit:
                break
            del self._users[user]
            self._times.pop(user, None)
            gone.append(user)
        self.expired += len(gone)
        return gone

    def __len__(self) -> int:
        return len(self._users)

    def state(self) -> dict[str, Any]:
        out = {"length": self.length, "max_users": self.max_users,
               "users": [[user, list(items)] for user, items in self._users.items()]}
        if self.ttl_seconds:
            out.update(ttl_seconds=self.ttl_seconds, expired=self.expired,
                       clock=self.clock if self.clock > -math.inf else None,
                       times=[self._times.get(user) for user in self._users])
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UserHistory:
        history = cls(state["length"], state["max_users"], state.get("ttl_seconds", 0.0))
        for user, items in state["users"]:
            history._users[user] = deque(items, maxlen=history.length)
        if history.ttl_seconds:
            times = state.get("times") or []
            if len(times) != len(history._users):
                raise ConfigError(f"a history state with ttl_seconds holds {len(times)} times for "
                                  f"{len(history._users)} keys")
            history._times = {user: _event_time(t) for user, t in zip(history._users, times) if t is not None}
            clock = state.get("clock")
            history.clock = -math.inf if clock is None else _event_time(clock)
            history.expired = int(state.get("expired", 0))
        return history


def _event_time(value: Any) -> float:
    t = float(value)
    if not math.isfinite(t):
        raise ConfigError(f"an event time of {value} cannot order history entries by time (tables.ttl_seconds)")
    return t


def _appended(rows: np.ndarray, new: np.ndarray, length: int) -> np.ndarray:
    """``rows`` (oldest first, -1 padding after) with ``new`` entries after its last one, the
    oldest dropped beyond ``length``: a new (length, width) array."""
    present = rows[rows[:, 0] != -1]
    joined = np.concatenate([present, new.astype(np.int64, copy=False)])[-length:]
    out = np.full((length, new.shape[1]), -1, dtype=np.int64)
    out[: len(joined)] = joined
    return out


def _earlier_in_batch(keys: Sequence[str], added: Sequence[Any]) -> list[list[Any] | None]:
    """For each example of a batch, what the batch's earlier examples added to its key's history
    (None where nothing); ``added`` is what each example adds (None: nothing)."""
    pending: dict[str, list[Any]] = {}
    out: list[list[Any] | None] = []
    for key, entry in zip(keys, added):
        extra = pending.get(key)
        out.append(list(extra) if extra else None)
        if entry is not None:
            pending.setdefault(key, []).append(entry)
    return out


class BehaviourHistory:
    """What a model's spec asks for (``history_kind``): the user's clicked items, keyed by user,
    or the item's interactions, keyed by item: every user shown it, as ``u`` if they clicked and
    ``~u`` if not (the featurizer turns that into the user's row with a sign).
    ``before`` is read to featurise a batch, ``after`` records the batch once it has been learned."""

    def __init__(self, kind: str, length: int, max_keys: int = 1_000_000, fields: Sequence[str] = (),
                 ttl_seconds: float = 0.0) -> None:
        self.kind = kind
        self.fields = tuple(fields)  # remembered with each clicked item: entries are [item, value, ...]
        self.store = UserHistory(length, max_keys, ttl_seconds)
        self._by_item = kind == "item_interactions"
        # With an encoder (the featurizer's hashing of entries to rows), each key's history is also
        # kept as a (length, width) array of rows, encoded once when an entry is added instead of
        # on every later read: a history is read about `length` times per entry it holds.
        self._encode: Callable[[list[Any]], np.ndarray] | None = None
        self._rows: dict[str, np.ndarray] = {}

    def attach_encoder(self, encode: Callable[[list[Any]], np.ndarray]) -> None:
        """Keep encoded rows from now on (``encode``: entries → (n, width) row ids); see
        :meth:`rows_before_learning`. Histories loaded from a state are encoded when first read.
        Attaching the same encoder again keeps what is encoded."""
        if self._encode != encode:
            self._encode = encode
            self._rows = {}

    def rows_before_learning(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
                             features: Sequence[dict[str, Any]] | None = None) -> np.ndarray:
        """:meth:`before_learning` as encoded rows: (n, length, width), oldest entry first, -1 in
        empty slots (the featurizer takes it as is). Needs :meth:`attach_encoder`."""
        assert self._encode is not None, "attach_encoder first"
        keys = items if self._by_item else users
        arrays = [self._key_rows(key) for key in keys]
        entries = self._entries(users, items, labels, features)
        added = [k for k, e in enumerate(entries) if e is not None]
        if added:
            encoded: list[Any] = [None] * len(entries)
            for k, row in zip(added, self._encode([entries[k] for k in added])):
                encoded[k] = row
            for k, extra in enumerate(_earlier_in_batch(keys, encoded)):
                if extra:
                    arrays[k] = _appended(arrays[k], np.stack(extra), self.store.length)
        return np.stack(arrays)

    def _key_rows(self, key: str) -> np.ndarray:
        rows = self._rows.get(key)
        if rows is None:
            assert self._encode is not None
            rows = np.full((self.store.length, self._width()), -1, dtype=np.int64)
            entries = self.store.entries(key)
            if entries:
                rows = _appended(rows, self._encode(entries), self.store.length)
            self._rows[key] = rows
        return rows

    def _width(self) -> int:
        return 1 if self._by_item else 1 + len(self.fields)

    def before(self, users: Sequence[str], items: Sequence[str]) -> list[list[Any]]:
        """Each example's history as stored now (for scoring: nothing of the batch itself)."""
        return self.store.of(items if self._by_item else users)

    def before_learning(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
                        features: Sequence[dict[str, Any]] | None = None) -> list[list[Any]]:
        """Each example's history in stream order while learning a batch: what is stored, plus
        what the batch's *earlier* examples add (their labels are known: they come before it in
        the stream). Without this, a user's clicks inside one batch would be invisible to their
        later impressions of the same batch, and the latest click is often the one that matters."""
        keys = items if self._by_item else users
        out = self.store.of(keys)
        for k, extra in enumerate(_earlier_in_batch(keys, self._entries(users, items, labels, features))):
            if extra:
                out[k] = out[k] + extra
        return out

    def after(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
              features: Sequence[dict[str, Any]] | None = None, times: Sequence[float] | None = None) -> None:
        """Record a learned batch (in order); ``times``: each example's event time (with a ttl)."""
        if not len(users):
            return
        keys = items if self._by_item else users
        entries = self._entries(users, items, labels, features)
        kept_keys = [k for k, e in zip(keys, entries) if e is not None]
        kept = [e for e in entries if e is not None]
        kept_times = newest = None
        if self.store.ttl_seconds and times is not None and len(times):
            self.store.touch(keys, times)
            kept_times = [t for t, e in zip(times, entries) if e is not None]
            newest = max(times)
        forgotten = self.store.add(kept_keys, kept, kept_times, newest)
        if self._encode is not None:
            for key in forgotten:
                self._rows.pop(key, None)
            for key, row in zip(kept_keys, self._encode(kept) if kept else ()):
                if key in self._rows:
                    self._rows[key] = _appended(self._rows[key], row[None, :], self.store.length)

    def _entries(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
                 features: Sequence[dict[str, Any]] | None) -> list[Any]:
        """What each example adds to its key's history (None: nothing, an impression not clicked)."""
        if self._by_item:
            return [u if label else f"~{u}" for u, label in zip(users, labels)]
        if self.fields and features is not None:
            if len(self.fields) == 1:  # the usual case, without a generator per entry
                name = self.fields[0]
                return [[item, f.get(name)] if label else None for item, f, label in zip(items, features, labels)]
            return [[item, *[f.get(name) for name in self.fields]] if label else None
                    for item, f, label in zip(items, features, labels)]
        return [item if label else None for item, label in zip(items, labels)]

    def __len__(self) -> int:
        return len(self.store)

    def summary(self) -> dict[str, float]:
        """Keys held, keys forgotten for their age, and the ttl (0: none), for reports and /metrics."""
        return {"keys": len(self.store), "expired": self.store.expired, "ttl_seconds": self.store.ttl_seconds}

    def state(self) -> dict[str, Any]:
        return {**self.store.state(), "kind": self.kind, "fields": list(self.fields)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BehaviourHistory:
        history = cls(state.get("kind", "user_clicks"), state["length"], state["max_users"], state.get("fields", ()),
                      state.get("ttl_seconds", 0.0))
        history.store = UserHistory.from_state(state)
        return history
