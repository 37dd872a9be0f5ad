"""Model versions in Redis: immutable versions, a head, a live pointer, announcements.

Key layout (``P`` = ``streamrec:<namespace>:model:<model>``)::

    P:version:<n>   hash, immutable once written
                      meta     JSON: model, version, parent, created_at, examples_seen, offsets
                               ({"topic:partition": next offset}), joiner_watermark, metrics, ...
                      weights  safetensors: the model's tensors (weights and optimiser state)
                      trainer  safetensors: the trainer's streaming-metrics state
                      joiner   JSON: the joiner's open impressions, early clicks and counters
                      history  JSON: users' recent clicks (sequence models only)
    P:head          the newest version number (the trainer's lineage; resume point)
    P:live          the version scorers serve
    P:pinned        present: the trainer stops moving ``live`` (set by pin/rollback)
    P:versions      sorted set of the versions kept, scored by version number
    P:delta:<lineage>:<seq>
                    hash {meta, weights}: the rows changed since delta seq-1 of the same learner
                    (models/base.py delta_bytes); expires after a few minutes
    P:delta_head    JSON {"lineage", "seq", "base_version"} of the newest delta
    P:events        list, newest first, the last EVENTS_KEPT pointer events: JSON {"at", "kind",
                    "version", "live", "reason"}; kind is published (live moved to it), held (the
                    gate or a pin kept live where it was), promote, rollback or pin (set_live)
    P:announce      pub/sub channel: {"version": n, "live": m} after every publish and pointer move,
                    {"delta": seq, "lineage": l} after every delta
    streamrec:<namespace>:champion
                    the model name that serves when a scorer follows the champion (``models champion``)

A version records the ``lineage`` and ``delta_seq`` of the learner that made it: the deltas of
that lineage after ``delta_seq`` apply on top of it, in order. A learner that starts again (a
restart resumes from the head version) begins a new lineage whose deltas name that version as
their ``base_version``. A scorer that finds a delta missing or out of line reloads a full version.

A publish is one MULTI/EXEC transaction under WATCH of ``head``, ``live`` and ``pinned``: a reader
never sees part of a version, a trainer killed mid-publish leaves nothing behind (Redis drops a
transaction whose client disconnects before EXEC), a pin or promote that lands meanwhile makes it
retry rather than be overwritten, and a second trainer publishing the same model from a stale
parent fails with :class:`VersionConflict` instead of forking the lineage. Only the newest
``keep`` versions are kept; the live version is never deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from streamrec.stream.errors import StreamrecError

log = logging.getLogger(__name__)
PUBLISH_ATTEMPTS = 5
EVENTS_KEPT = 1000


class VersionConflict(StreamrecError):
    """Another writer moved the model's head since this one loaded it."""


@dataclass(frozen=True)
class DeltaRecord:
    lineage: str
    seq: int
    meta: dict[str, Any]
    weights: bytes


def champion_key(namespace: str) -> str:
    return f"streamrec:{namespace}:champion"


def champion_channel(namespace: str) -> str:
    return f"streamrec:{namespace}:champion:announce"


def champion(client: redis.Redis, namespace: str) -> str | None:
    value = client.get(champion_key(namespace))
    return None if value is None else value.decode()


def set_champion(client: redis.Redis, namespace: str, model: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.set(champion_key(namespace), model)
        pipe.publish(champion_channel(namespace), model)
        pipe.execute()


@dataclass(frozen=True)
class Version:
    number: int
    meta: dict[str, Any]
    weights: bytes
    trainer: bytes | None = None
    joiner: bytes | None = None
    history: bytes | None = None  # JSON: users' recent clicks (sequence models only)


class VersionStore:
    def __init__(self, client: redis.Redis, namespace: str, model: str) -> None:
        self.client = client
        self.namespace = namespace
        self.model = model
        self.prefix = f"streamrec:{namespace}:model:{model}"

    # ------------------------------------------------------------------ keys

    def version_key(self, number: int) -> str:
        return f"{self.prefix}:version:{number}"

    @property
    def head_key(self) -> str:
        return f"{self.prefix}:head"

    @property
    def live_key(self) -> str:
        return f"{self.prefix}:live"

    @property
    def pinned_key(self) -> str:
        return f"{self.prefix}:pinned"

    @property
    def versions_key(self) -> str:
        return f"{self.prefix}:versions"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:announce"

    @property
    def delta_head_key(self) -> str:
        return f"{self.prefix}:delta_head"

    def delta_key(self, lineage: str, seq: int) -> str:
        return f"{self.prefix}:delta:{lineage}:{seq}"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}:events"

    # ------------------------------------------------------------------ reads

    def head(self) -> int | None:
        value = self.client.get(self.head_key)
        return None if value is None else int(value)

    def live(self) -> int | None:
        value = self.client.get(self.live_key)
        return None if value is None else int(value)

    def versions(self) -> list[int]:
        return [int(v) for v in self.client.zrange(self.versions_key, 0, -1)]

    def previous_promoted(self, before: int) -> int | None:
        """The newest kept version older than ``before`` that went live through the quality gate
        (versions from before the gate count as promoted): where a rollback goes, never to a
        version the gate held."""
        for number in reversed(self.versions()):
            if number < before and (self.meta(number).get("gate") or {}).get("promoted", True):
                return number
        return None

    def events(self, limit: int = EVENTS_KEPT) -> list[dict[str, Any]]:
        """Pointer events, oldest first (the dashboard's version timeline)."""
        return [orjson.loads(e) for e in reversed(self.client.lrange(self.events_key, 0, limit - 1))]

    def record_event(self, kind: str, version: int, live: int | None, reason: str | None) -> None:
        """Log a pointer event that :meth:`publish` and :meth:`set_live` do not log themselves."""
        with self.client.pipeline(transaction=True) as pipe:
            self._log_event(pipe, kind, version, live, reason)
            pipe.execute()

    def _log_event(self, pipe: Any, kind: str, version: int, live: int | None, reason: str | None) -> None:
        event = {"at": time.time(), "kind": kind, "version": version, "live": live, "reason": reason}
        pipe.lpush(self.events_key, orjson.dumps(event))
        pipe.ltrim(self.events_key, 0, EVENTS_KEPT - 1)

    def meta(self, number: int) -> dict[str, Any]:
        raw = self.client.hget(self.version_key(number), "meta")
        if raw is None:
            raise StreamrecError(f"model {self.model!r} has no version {number} in namespace {self.namespace!r}")
        return orjson.loads(raw)

    def load(self, number: int, *, with_state: bool = True) -> Version:
        fields = ["meta", "weights", "trainer", "joiner", "history"] if with_state else ["meta", "weights"]
        values = self.client.hmget(self.version_key(number), fields)
        if values[0] is None or values[1] is None:
            raise StreamrecError(f"model {self.model!r} has no version {number} in namespace {self.namespace!r}")
        return Version(number, orjson.loads(values[0]), values[1],
                       *(values[2:] if with_state else (None, None)))

    # ------------------------------------------------------------------ writes

    def history(self, number: int) -> bytes | None:
        """A version's behaviour histories (JSON), or None if it has none."""
        return self.client.hget(self.version_key(number), "history")

    def delta_head(self) -> dict[str, Any] | None:
        raw = self.client.get(self.delta_head_key)
        return None if raw is None else orjson.loads(raw)

    def load_delta(self, lineage: str, seq: int) -> DeltaRecord | None:
        """A delta, or None if it expired or was never written (a gap)."""
        meta, weights = self.client.hmget(self.delta_key(lineage, seq), ["meta", "weights"])
        if meta is None or weights is None:
            return None
        return DeltaRecord(lineage, seq, orjson.loads(meta), weights)

    def publish_delta(self, *, lineage: str, seq: int, meta: dict[str, Any], weights: bytes, ttl_s: float) -> None:
        meta = {**meta, "model": self.model, "lineage": lineage, "seq": seq, "created_at": time.time()}
        head = {"lineage": lineage, "seq": seq, "base_version": meta.get("base_version")}
        with self.client.pipeline(transaction=True) as pipe:
            key = self.delta_key(lineage, seq)
            pipe.hset(key, mapping={"meta": orjson.dumps(meta), "weights": weights})
            pipe.expire(key, max(1, int(ttl_s)))
            pipe.set(self.delta_head_key, orjson.dumps(head))
            pipe.publish(self.channel, orjson.dumps({"delta": seq, "lineage": lineage}))
            pipe.execute()

    def publish(self, *, parent: int | None, meta: dict[str, Any], weights: bytes, trainer: bytes,
                joiner: bytes, keep: int, promote: bool = True, history: bytes | None = None) -> int:
        """Write version ``parent + 1`` and move head to it, atomically; live moves too unless
        pinned or ``promote`` is False (the quality gate held the version)."""
        number = (parent or 0) + 1
        meta = {**meta, "model": self.model, "version": number, "parent": parent, "created_at": time.time()}
        # head, live and pinned are all watched: a `models pin` or `promote` landing between the
        # reads below and EXEC makes the transaction retry with what it set, instead of being
        # overwritten. Only a moved head is a conflict (checked again on every attempt).
        for _attempt in range(PUBLISH_ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(self.head_key, self.live_key, self.pinned_key)
                current = pipe.get(self.head_key)
                current = None if current is None else int(current)
                if current is None and parent is not None:
                    # Redis came back empty (a restart without persistence): keep the trainer's state
                    # and keep numbering upwards, so scorers never see a version number go back.
                    log.warning("model %r: head version missing in Redis (restarted empty?); "
                                "continuing the lineage at version %d", self.model, number)
                    meta["history_lost"] = True
                elif current != parent:
                    pipe.reset()
                    raise VersionConflict(
                        f"model {self.model!r} in namespace {self.namespace!r} is at version {current}, but this "
                        f"trainer continues version {parent}: run one trainer per model (or a new namespace)")
                pinned = pipe.exists(self.pinned_key)
                live = pipe.get(self.live_key)
                kept = [int(v) for v in pipe.zrange(self.versions_key, 0, -1)]
                hold = pinned or not promote
                new_live = int(live) if (hold and live is not None) else (None if hold else number)
                retained = sorted(kept + [number])
                drop = [v for v in retained[:-keep] if v != new_live] if keep > 0 else []
                pipe.multi()
                fields = {"meta": orjson.dumps(meta), "weights": weights, "trainer": trainer, "joiner": joiner}
                if history is not None:
                    fields["history"] = history
                pipe.hset(self.version_key(number), mapping=fields)
                pipe.set(self.head_key, number)
                if new_live is not None:
                    pipe.set(self.live_key, new_live)
                pipe.zadd(self.versions_key, {str(number): number})
                for old in drop:
                    pipe.delete(self.version_key(old))
                    pipe.zrem(self.versions_key, str(old))
                if hold:
                    reason = "pinned" if pinned else (meta.get("gate") or {}).get("reason")
                    self._log_event(pipe, "held", number, new_live, reason)
                else:
                    self._log_event(pipe, "published", number, number, None)
                pipe.publish(self.channel, orjson.dumps({"version": number, "live": new_live}))
                try:
                    pipe.execute()
                    return number
                except redis.WatchError:
                    continue
        raise VersionConflict(f"model {self.model!r}: the pointers kept changing during {PUBLISH_ATTEMPTS} "
                              "publish attempts; run one trainer per model")

    def pinned(self) -> bool:
        return bool(self.client.exists(self.pinned_key))

    def unpin(self) -> None:
        """Let the trainer move ``live`` again (from its next version on)."""
        self.client.delete(self.pinned_key)

    def set_live(self, number: int, *, pin: bool, kind: str = "promote", reason: str | None = None) -> None:
        """Point ``live`` at an existing version; ``pin`` keeps the trainer from moving it.
        ``kind`` (promote, rollback, pin) and ``reason`` go to the event log.

        The version key is watched, so a publish that prunes it meanwhile makes this fail cleanly
        instead of leaving ``live`` on a deleted version."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.version_key(number))
            if not pipe.exists(self.version_key(number)):
                pipe.reset()
                raise StreamrecError(f"model {self.model!r} has no version {number} (kept: {self.versions()})")
            head = pipe.get(self.head_key)
            pipe.multi()
            pipe.set(self.live_key, number)
            if pin:
                pipe.set(self.pinned_key, 1)
            else:
                pipe.delete(self.pinned_key)
            self._log_event(pipe, kind, number, number, reason)
            pipe.publish(self.channel, orjson.dumps({"version": None if head is None else int(head), "live": number}))
            try:
                pipe.execute()
            except redis.WatchError:
                raise StreamrecError(f"model {self.model!r}: version {number} was removed while being made live; "
                                     f"kept: {self.versions()}") from None
