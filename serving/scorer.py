"""The scorer: serves a model's live version from Redis and hot-swaps it while requests run.

It follows the live pointer of one model (or of the namespace's champion model, see
``streamrec models champion``) through the pub/sub announce channel, with polling as the
fallback, and keeps the served model fresh with the trainer's deltas:

* ``live`` is the trainer's newest version and not pinned: serve it plus every delta after it,
  applied in order (the rows the trainer changed, published every half second);
* otherwise (pinned, rolled back, or the newest version held by the quality gate): serve exactly
  the live version, no deltas.

A delta that is missing (expired, or lost while Redis was down) or out of line is a gap: the
scorer reloads the full live version and goes on from the deltas after it.

Swaps are atomic per request with two copies of the model: updates go to the standby copy,
which then becomes active in one pointer assignment, and the old copy is brought up to date
only after its last in-flight request has finished. A request reads one copy from start to end,
so it is answered entirely by one state, and :class:`Prediction` names which (version, lineage,
delta sequence number).
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
import redis

from streamrec.models import PristineModels, model_from_stored
from streamrec.models.base import DeltaTensors, OnlineModel, load_tensors_blob, read_delta
from streamrec.models.sharded import join_delta_shards
from streamrec.stream import redis_keys
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.errors import StreamrecError
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.redis_connection import connect
from streamrec.versions.store import DeltaRecord, VersionStore, champion

log = logging.getLogger(__name__)
STOP_CHECK_S = 0.25
DEFER_S = 1.0  # how long a version cut after the newest delta waits for one before a full load


class NotReady(StreamrecError):
    """No live version to serve yet."""


class BadRequest(StreamrecError):
    """A request the scorer cannot score (its message says why)."""


@dataclass(frozen=True)
class Served:
    """What one model copy holds: a version, plus the deltas applied on top of it."""

    model: str
    version: int
    lineage: str | None
    delta_seq: int           # the last delta of ``lineage`` reflected (the version's own, if none applied)
    deltas_applied: int      # deltas applied on top of ``version``
    event_time: float | None  # label time of the newest example reflected (trainer's event time)
    watermark: float | None  # the trainer's join watermark: every label known before it is reflected
    swapped_at: float        # unix time this state started serving
    # the delta seq whose dense weights are served; the version's delta_seq when they are the
    # version's own (its cut lies after that delta, so no later version can reuse them)
    dense_at: int = 0
    ingested_at: float | None = None  # wall-clock time the trainer learned the newest example reflected

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "lineage": self.lineage, "delta_seq": self.delta_seq,
                "deltas_applied": self.deltas_applied, "event_time": self.event_time, "watermark": self.watermark,
                "ingested_at": self.ingested_at, "swapped_at": self.swapped_at}


@dataclass(frozen=True)
class Prediction:
    """Click probabilities and the exact model state that produced them."""

    probabilities: np.ndarray
    served: Served


_KEEP = object()  # _swap_in: the copies keep their interactions


class _Copy:
    """One copy of the served model and the number of requests reading it."""

    def __init__(self, model: OnlineModel, served: Served, interactions: BehaviourHistory | None = None) -> None:
        self.model = model
        self.served = served
        self.readers = 0
        # item-based models (autorec) read each item's interactions, which only the trainer sees:
        # served from the version's checkpoint (as of that version; deltas carry none)
        self.interactions = interactions


class _ReadyVersions:
    """Pristine copies of the versions a pointer move is most likely to ask for (the live version
    and the promoted one before it), loaded by a background thread. A pin or a rollback then swaps
    in a copy of one instead of building the model from its bytes, which is most of a full load."""

    def __init__(self, keep: int, pristine: PristineModels | None = None) -> None:
        self.keep = keep
        self.pristine = pristine
        self._models: OrderedDict[tuple[str, int], tuple[OnlineModel, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._wanted: queue.Queue[tuple[VersionStore, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.hits = 0

    def get(self, model: str, number: int) -> tuple[OnlineModel, Any] | None:
        with self._lock:
            found = self._models.get((model, number))
            if found is not None:
                self._models.move_to_end((model, number))
                self.hits += 1
            return found

    def has(self, model: str, number: int) -> bool:
        with self._lock:
            return (model, number) in self._models

    def put(self, model: str, number: int, pristine: OnlineModel, meta: Any) -> None:
        if self.keep <= 0:
            return
        with self._lock:
            self._models[(model, number)] = (pristine, meta)
            self._models.move_to_end((model, number))
            while len(self._models) > self.keep:
                self._models.popitem(last=False)

    def want(self, store: VersionStore, numbers: Sequence[int]) -> None:
        if self.keep <= 0:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._load_loop, name="streamrec-scorer-ready", daemon=True)
            self._thread.start()
        for number in numbers[:self.keep]:
            with self._lock:
                if (store.model, number) in self._models:
                    continue
            self._wanted.put((store, number))

    def _load_loop(self) -> None:
        while True:
            item = self._wanted.get()
            if item is None:
                return
            store, number = item
            with self._lock:
                if (store.model, number) in self._models:
                    continue
            try:
                version = store.load(number, with_state=False)
                self.put(store.model, number, model_from_stored(version.weights, version.shards, self.pristine), version.meta)
            except Exception as exc:  # noqa: BLE001 - a version that does not load is the follower's to report
                log.debug("could not ready %s version %d: %s", store.model, number, exc)

    def close(self) -> None:
        if self._thread is not None:
            self._wanted.put(None)
            self._thread.join(10)
            self._thread = None


def _clone(model: OnlineModel) -> OnlineModel:
    # An in-memory copy of tensors we built ourselves (no untrusted bytes are unpickled); much
    # faster than constructing a second seeded model, which redraws every embedding row.
    return copy.deepcopy(model)


MAX_EVENTS_PER_REQUEST = 10_000
MAX_FEATURES = 1024          # per event, as stream/events.py allows on the stream
MAX_ID_CHARS = 256
MAX_VALUE_CHARS = 4096       # a feature value's characters
MAX_HISTORY = 1000           # history entries per event
_SCALARS = (str, int, float, bool, type(None))


def _check_value(index: int, name: str, value: Any) -> None:
    if not isinstance(value, _SCALARS):
        raise BadRequest(f"event {index}: feature {str(name)[:64]!r} must be a string, a number or null, "
                         f"not {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise BadRequest(f"event {index}: feature {str(name)[:64]!r} is {len(value)} characters; "
                         f"at most {MAX_VALUE_CHARS}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"event {index}: feature {str(name)[:64]!r} must be finite")


def parse_events(payload: Any) -> tuple[list[str], list[str], list[dict[str, Any]], list[list[Any]]]:
    """``[{"user_id", "item_id", "features": {...}, "history": [item ids]}, ...]`` (or
    ``{"events": [...]}``) → columns. ``history`` (the user's recently clicked items, oldest
    first) is optional; only sequence models read it. With ``--history-field`` an entry may be
    ``{"item_id": ..., "<field>": value}`` (a plain id then means the field is missing).

    Every shape is checked here, with bounds on counts and lengths: a request the model cannot
    score is a :class:`BadRequest` naming the event and the field."""
    items = payload.get("events") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not items:
        raise BadRequest('send a non-empty JSON list of events, or {"events": [...]}')
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise BadRequest(f"{len(items)} events in one request; at most {MAX_EVENTS_PER_REQUEST}")
    users, item_ids, features, histories = [], [], [], []
    for index, event in enumerate(items):
        if not isinstance(event, dict):
            raise BadRequest(f"event {index} is not a JSON object")
        user, item, feats = event.get("user_id"), event.get("item_id"), event.get("features", {})
        if not isinstance(user, str) or not isinstance(item, str):
            raise BadRequest(f"event {index}: user_id and item_id must be strings")
        if len(user) > MAX_ID_CHARS or len(item) > MAX_ID_CHARS:
            raise BadRequest(f"event {index}: user_id and item_id may have at most {MAX_ID_CHARS} characters")
        if not isinstance(feats, dict):
            raise BadRequest(f"event {index}: features must be an object")
        if len(feats) > MAX_FEATURES:
            raise BadRequest(f"event {index}: {len(feats)} features; at most {MAX_FEATURES}")
        for name, value in feats.items():
            _check_value(index, name, value)
        history = event.get("history", [])
        if (not isinstance(history, list) or len(history) > MAX_HISTORY
                or not all(isinstance(h, (str, dict)) for h in history)):
            raise BadRequest(f"event {index}: history must be a list of at most {MAX_HISTORY} item ids (strings), or "
                             'of objects {"item_id": ..., "<history field>": ...} for models trained with --history-field')
        for entry in history:
            if isinstance(entry, str):
                if len(entry) > MAX_ID_CHARS:
                    raise BadRequest(f"event {index}: a history item id has more than {MAX_ID_CHARS} characters")
            else:
                for name, value in entry.items():
                    _check_value(index, f"history.{name}", value)
        users.append(user)
        item_ids.append(item)
        features.append(feats)
        histories.append(history)
    return users, item_ids, features, histories


class Scorer:
    """``Scorer(redis_url, namespace, model).predict(events)``; ``model=None`` serves the champion."""

    def __init__(self, redis_url: str, namespace: str, model: str | None = None, *, follow: bool = True,
                 deltas: bool = True, poll_s: float = 1.0, on_swap: Any = None, ready_versions: int = 2) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.fixed_model = model
        self.follow = follow
        self.use_deltas = deltas
        self.poll_s = poll_s
        self.on_swap = on_swap  # called with the new Served after every swap (benchmarks, metrics)
        self.client = connect(redis_url)
        self._stores: dict[str, VersionStore] = {}
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._update_lock = threading.Lock()  # one updater at a time (follower thread or refresh())
        self._active: _Copy | None = None
        self._standby: _Copy | None = None
        self._featurizer: Featurizer | None = None
        self._stuck_at: tuple[int, str | None, int] | None = None  # gap seen at this state: wait for a version
        self._deferred: tuple[int, float] | None = None  # (version, since): cut after the newest delta
        self._delta_announced_at = float("-inf")  # monotonic time of the last delta announcement heard
        self.swaps = {"full": 0, "delta": 0, "rebase": 0}
        self.bad_versions: set[tuple[str, int]] = set()  # (model, version) that failed to load
        self.gaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        self._subscribed: str | None = None
        # a fresh model per served model, copied by every full load instead of drawn again
        # (memory: one more model each), and pristine copies of the live and the previous
        # promoted version (memory: that many more models)
        self.pristine = PristineModels(keep=2)
        self.ready = _ReadyVersions(ready_versions if follow else 0, self.pristine)
        self._ready_for: tuple[str, int | None, int | None] | None = None  # (model, live, head) readied for
        self._pointers_seen: tuple[str, int | None, int | None] | None = None  # the last refresh's read

    # ------------------------------------------------------------------ serving

    @property
    def served(self) -> Served | None:
        active = self._active
        return None if active is None else active.served

    def model_age_seconds(self) -> float:
        """Seconds since the trainer learned the newest example the served state reflects (NaN
        when unknown: nothing served, or a version from before this was recorded)."""
        served = self.served
        if served is None or served.ingested_at is None:
            return math.nan
        return time.time() - served.ingested_at

    def event_time_age_seconds(self) -> float:
        """Now minus the newest reflected label's event time: meaningful only where the stream's
        clock is the wall clock (a replay of an old log is years old by it)."""
        served = self.served
        if served is None or served.event_time is None:
            return math.nan
        return time.time() - served.event_time

    def predict(self, events: Any) -> Prediction:
        """Click probabilities for events (see :func:`parse_events`), all from one model state."""
        users, items, features, histories = parse_events(events)
        with self._lock:
            copy = self._active
            if copy is None:
                raise NotReady(f"no live version of {self._model_label()} in namespace {self.namespace!r} yet")
            copy.readers += 1
            featurizer, interactions = self._featurizer, copy.interactions
        try:
            assert featurizer is not None
            if interactions is not None:
                histories = interactions.before(users, items)
            try:
                batch = featurizer.build(users, items, features, histories=histories)
            except StreamrecError as exc:
                raise BadRequest(str(exc)) from None
            return Prediction(copy.model.predict_proba(batch), copy.served)
        finally:
            with self._lock:
                copy.readers -= 1
                if copy.readers == 0:
                    self._drained.notify_all()

    # ------------------------------------------------------------------ following

    def _model_label(self) -> str:
        if self.fixed_model:
            return f"model {self.fixed_model!r}"
        return "the champion model (none is named until `streamrec models champion NAME`)"

    def _store(self, model: str) -> VersionStore:
        store = self._stores.get(model)
        if store is None:
            store = self._stores[model] = VersionStore(self.client, self.namespace, model)
        return store

    def current_model(self) -> str | None:
        """The fixed model, or the namespace's champion (None while none is named: nothing is served)."""
        return self.fixed_model or champion(self.client, self.namespace)

    def refresh(self) -> bool:
        """Bring the served state up to date with Redis once; True if it changed."""
        with self._update_lock:
            model = self.current_model()
            if model is None:
                return False
            store = self._store(model)
            live, head, pinned = store.pointers()
            self._pointers_seen = (model, live, head)
            if live is None:
                return False
            following = self.use_deltas and live == head and not pinned
            served = self.served
            if (model, live) in self.bad_versions:
                # the live version does not load: keep serving what is served (or fall back once)
                if served is None or served.model != model:
                    self._load_newest_loadable(store, live)
                return self.served != served
            if served is None or served.model != model or (served.deltas_applied and not following):
                if not self._load_or_report(store, live):
                    self._load_newest_loadable(store, live)
                    return self.served != served
            elif served.version != live and not (following and self._rebase(store, live)):
                # a version that is ready in memory loads at once; another waits a moment for a delta
                # (only while the trainer is sending deltas: an idle one sends none to wait for)
                now = time.monotonic()
                if self._deferred is not None and self._deferred[0] == live and now - self._deferred[1] < DEFER_S \
                        and now - self._delta_announced_at < DEFER_S and not self.ready.has(model, live):
                    return False
                if not self._load_or_report(store, live):
                    return False
            elif served.version == live and not following:
                return False
            if following:
                self._apply_deltas(store)
            return self.served != served

    def _load_or_report(self, store: VersionStore, number: int) -> bool:
        """Load ``number`` in full; a version that cannot be loaded (corrupt, or asking for more
        than a model may hold) is logged, counted and remembered instead of stopping the scorer."""
        try:
            self._load_full(store, number)
            return True
        except StreamrecError as exc:
            self.bad_versions.add((store.model, number))
            log.error("%s version %d cannot be served (%s); serving the newest version that loads", store.model,
                      number, exc)
            return False

    def _load_newest_loadable(self, store: VersionStore, below: int) -> None:
        """With nothing of this model served yet: the newest kept version older than ``below`` that loads."""
        served = self.served
        if served is not None and served.model == store.model:
            return
        for number in sorted((v for v in store.versions() if v < below), reverse=True):
            if (store.model, number) not in self.bad_versions and self._load_or_report(store, number):
                return

    def _load_full(self, store: VersionStore, number: int) -> None:
        ready = self.ready.get(store.model, number)
        if ready is not None:
            model, meta = _clone(ready[0]), ready[1]
        else:
            version = store.load(number, with_state=False)
            model = model_from_stored(version.weights, version.shards, self.pristine)
            meta = version.meta
            self.ready.want(store, [number])  # its pristine copy is built in the background
        served = Served(store.model, number, meta.lineage, meta.delta_seq, 0, meta.event_time,
                        meta.joiner_watermark, time.time(), dense_at=meta.delta_seq, ingested_at=meta.ingested_at)
        interactions = version_interactions(store, number, model.spec)
        standby = _Copy(_clone(model), served, interactions)
        featurizer = self._featurizer
        if featurizer is None or featurizer.spec != model.spec:
            featurizer = Featurizer(model.spec)
        with self._lock:
            self._active, self._standby, self._featurizer = _Copy(model, served, interactions), standby, featurizer
        self._stuck_at = None
        self._deferred = None
        self.swaps["full"] += 1
        log.info("serving %s version %d (full load)", store.model, number)
        if self.on_swap is not None:
            self.on_swap(served)

    def _rebase(self, store: VersionStore, number: int) -> bool:
        """Serve version ``number`` without reloading it, when the served state already holds it:
        same lineage, and its cut lies before the newest delta served. The rows are then exactly
        version + the deltas after it; the dense weights too, if a delta after its cut carried
        them, else the version's are copied in. A full load of a large model takes seconds on a
        busy machine and versions come every few seconds: this keeps the deltas flowing.

        A version cut after the newest delta is deferred until the next delta arrives (at most
        ``DEFER_S``, then it is loaded in full)."""
        served = self.served
        assert served is not None
        meta = store.meta(number)
        if meta.lineage != served.lineage:
            return False
        self._apply_deltas(store)  # catch up first: the version may be behind the newest delta
        served = self.served
        assert served is not None
        seq = meta.delta_seq
        if seq >= served.delta_seq:
            if self._deferred is None or self._deferred[0] != number:
                self._deferred = (number, time.monotonic())
            return False
        self._deferred = None
        new = replace(served, version=number, deltas_applied=served.delta_seq - seq, swapped_at=time.time())
        interactions = version_interactions(store, number, None if self._featurizer is None else self._featurizer.spec)
        if served.dense_at > seq:
            self._swap_in(new, lambda model: None, interactions)
        else:
            stored = load_tensors_blob(store.load(number, with_state=False).weights)  # parsed once, for both copies
            self._swap_in(replace(new, dense_at=seq), lambda model: model.load_dense(stored), interactions)
        self.swaps["rebase"] += 1
        log.info("serving %s version %d (rebased, %d deltas on top)", store.model, number, new.deltas_applied)
        return True

    def _swap_in(self, new: Served, change: Any, interactions: Any = _KEEP) -> None:
        """Apply ``change`` to the standby copy, make it active, then (once the old copy's last
        request has finished) apply it to the old copy, which becomes the standby. A rebase also
        brings its version's ``interactions``."""
        standby = self._standby
        assert standby is not None
        change(standby.model)
        standby.served = new
        if interactions is not _KEEP:
            standby.interactions = interactions
        with self._lock:
            old, self._active = self._active, standby
            while old is not None and old.readers:
                self._drained.wait()
        if old is not None:
            change(old.model)
            old.served = new
            if interactions is not _KEEP:
                old.interactions = interactions
        self._standby = old
        if self.on_swap is not None:
            self.on_swap(new)

    def _pending_deltas(self, store: VersionStore) -> list[DeltaRecord] | None:
        """The deltas to apply now, in order; [] if none; None if there is a gap."""
        served = self.served
        head = store.delta_head()
        if served is None or head is None or self._stuck_at == (served.version, served.lineage, served.delta_seq):
            return []
        lineage, newest = head["lineage"], int(head["seq"])
        if lineage == served.lineage:
            first = served.delta_seq + 1
        elif served.deltas_applied == 0 and head.get("base_version") == served.version:
            first = 1  # a trainer that started again from this very version
        else:
            return None
        records = []
        for seq in range(first, newest + 1):
            record = store.load_delta(lineage, seq)
            if record is None:
                return None
            records.append(record)
        return records

    def _apply_deltas(self, store: VersionStore) -> bool:
        records = self._pending_deltas(store)
        served = self.served
        assert served is not None
        if records is None:
            if served.deltas_applied:
                log.warning("gap in the deltas of %s after %s:%d; reloading version %d", store.model,
                            served.lineage, served.delta_seq, served.version)
                self._load_full(store, served.version)
            # at the version itself, the missing deltas cannot be passed: wait for the next version
            served = self.served
            assert served is not None
            self._stuck_at = (served.version, served.lineage, served.delta_seq)
            self.gaps += 1
            return True
        if not records:
            return False
        last = records[-1]
        deltas = [delta_of(r) for r in records]  # parsed once, applied to both copies
        dense = [r.seq for r, delta in zip(records, deltas) if delta.dense]
        new = replace(served, lineage=last.lineage, delta_seq=last.seq,
                      deltas_applied=served.deltas_applied + len(records),
                      event_time=last.meta.event_time or served.event_time,
                      ingested_at=last.meta.ingested_at or served.ingested_at,
                      watermark=last.meta.watermark or served.watermark, swapped_at=time.time(),
                      dense_at=dense[-1] if dense else served.dense_at)

        def apply(model: OnlineModel) -> None:
            for delta in deltas:
                model.apply_delta(delta)

        self._swap_in(new, apply)
        self.swaps["delta"] += 1
        return True

    def start(self) -> Scorer:
        """Load what is live now and, with ``follow``, keep following it in a thread. The
        subscription is made before the first load, so no announcement falls in between."""
        if self.follow:
            try:
                self._subscribe()
            except redis.RedisError as exc:
                log.warning("redis unavailable at start (%s); following will retry", exc)
        try:
            self.refresh()
        except redis.RedisError as exc:
            log.warning("redis unavailable at start (%s); following will retry", exc)
        if self.follow and self._thread is None:
            self._thread = threading.Thread(target=self._follow_loop, name="streamrec-scorer-follow", daemon=True)
            self._thread.start()
        return self

    def _subscribe(self) -> None:
        """(Re)subscribe to the champion channel and the current model's announcements."""
        if self._pubsub is None:
            self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(redis_keys.champion_channel(self.namespace))
            self._subscribed = None
        model = self.current_model()
        if model is not None and model != self._subscribed:
            if self._subscribed is not None:
                self._pubsub.unsubscribe(self._store(self._subscribed).keys.announce)
            self._pubsub.subscribe(self._store(model).keys.announce)
            self._subscribed = model

    def _drop_subscription(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis.RedisError:
                pass
        self._pubsub, self._subscribed = None, None

    def _follow_loop(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            try:
                self._subscribe()
                assert self._pubsub is not None
                # An announcement wakes us at once; without one, poll_s is the polling fallback.
                # Waits are sliced so that close() is prompt.
                message = self._pubsub.get_message(timeout=min(self.poll_s, STOP_CHECK_S))
                if message is None and time.monotonic() - last_refresh < self.poll_s:
                    continue
                while message is not None:  # several announcements in a row: one refresh covers them all
                    self._note_announcement(message)
                    message = self._pubsub.get_message(timeout=0)
                last_refresh = time.monotonic()
                self._subscribe()  # a new champion: listen to it before loading it
                self.refresh()
                self._ready_next()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("scorer lost redis (%s); retrying", exc)
                self._drop_subscription()
                self._stop.wait(self.poll_s)
            except Exception:  # noqa: BLE001 - the follower must outlive a bad version; it is logged
                log.exception("scorer refresh failed; serving the previous state")
                self._stop.wait(self.poll_s)
        self._drop_subscription()

    def _note_announcement(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if message.get("type") == "message" and isinstance(data, bytes) and data.startswith(b'{"delta"'):
            self._delta_announced_at = time.monotonic()

    def _ready_next(self) -> None:
        """When the pointers the last refresh read moved: have the live version and the promoted
        one before it ready."""
        seen = self._pointers_seen
        if seen is None or not self.ready.keep or seen[1] is None or seen == self._ready_for:
            return
        self._ready_for = seen
        model, live, _head = seen
        store = self._store(model)
        previous = store.previous_promoted(live)
        self.ready.want(store, [live] + ([previous] if previous is not None else []))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.ready.close()
        self._drop_subscription()
        self.client.close()

    def __enter__(self) -> Scorer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def delta_of(record: DeltaRecord) -> DeltaTensors:
    """A stored delta, parsed: one blob, or the shards of a delta of ranks joined."""
    return join_delta_shards(record.shards) if record.shards else read_delta(record.weights)


def version_interactions(store: VersionStore, number: int, spec: Any) -> BehaviourHistory | None:
    """The items' interactions checkpointed with version ``number``, for item-based models."""
    if spec is None or spec.history_kind != "item_interactions":
        return None
    raw = store.history(number)
    if raw is None:
        return BehaviourHistory(spec.history_kind, spec.history_length)
    return BehaviourHistory.from_state(orjson.loads(raw))


def predict_offline(store: VersionStore, served: dict[str, Any] | Served,
                    users: Sequence[str], items: Sequence[str], features: Sequence[dict[str, Any]]) -> np.ndarray:
    """What ``served`` (a response's version, lineage and delta_seq) predicts, rebuilt from Redis
    alone: the version, then its lineage's deltas up to ``delta_seq``. For checks and audits."""
    info = served.as_dict() if isinstance(served, Served) else served
    version = store.load(int(info["version"]), with_state=False)
    model = model_from_stored(version.weights, version.shards)
    lineage, seq = version.meta.lineage, version.meta.delta_seq
    if info.get("deltas_applied"):
        target_lineage, target_seq = info["lineage"], int(info["delta_seq"])
        first = seq + 1 if target_lineage == lineage else 1
        for number in range(first, target_seq + 1):
            record = store.load_delta(target_lineage, number)
            if record is None:
                raise StreamrecError(f"delta {target_lineage}:{number} is no longer in Redis")
            model.apply_delta(delta_of(record))
    interactions = version_interactions(store, int(info["version"]), model.spec)
    histories = interactions.before(list(users), list(items)) if interactions is not None else None
    return model.predict_proba(Featurizer(model.spec).build(list(users), list(items), list(features),
                                                            histories=histories))
