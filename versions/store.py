"""Model versions in Redis: immutable versions, a head, a live pointer, deltas, announcements.

A version (``P:version:<n>``, ``P`` the model's key prefix in stream/redis_keys.py) is a hash
written once: ``meta`` (JSON, :class:`~streamrec.versions.meta.VersionMeta`), ``weights``
(safetensors of the model), ``trainer`` (safetensors of the streaming quality metrics),
``joiner`` (JSON: the example source's state: open impressions, queued examples) and, for
sequence models, ``history`` (JSON: recent behaviour). A version learned by ranks keeps its weights
as one key per shard (``P:version:<n>:shard:<r>``): each rank stages its shard
(:meth:`VersionStore.stage_shard`, expiring), and the publish that makes the version visible
moves every staged shard under it, or fails if one is missing; a delta of ranks likewise
(``P:delta:<lineage>:<seq>:shard:<r>``, expiring with it). ``head`` names the newest version (the
trainer's resume point), ``live`` the one scorers serve, ``pinned`` stops the trainer moving
``live``. Deltas (``P:delta:<lineage>:<seq>``) carry the rows a learner changed since its
previous delta and expire after a few minutes; a version records the ``lineage`` and
``delta_seq`` it holds, so version + the lineage's later deltas is the trainer's model.

A publish is one MULTI/EXEC under WATCH of head, live and pinned: a reader never sees part of a
version, a trainer killed mid-publish leaves nothing, a pin landing meanwhile makes it retry,
and a second trainer publishing from a stale parent gets :class:`VersionConflict`. Only the
newest ``keep`` versions are kept; the live one is never deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from streamrec.stream import redis_keys
from streamrec.stream.errors import StreamrecError
from streamrec.versions.meta import DeltaMeta, VersionMeta

log = logging.getLogger(__name__)
PUBLISH_ATTEMPTS = 5
EVENTS_KEPT = 1000


class VersionConflict(StreamrecError):
    """Another writer moved the model's head since this one loaded it."""


class MissingShard(StreamrecError):
    """A version learned by ranks was to be published without every rank's shard staged."""


@dataclass(frozen=True)
class StagedShards:
    """The shards every rank staged for one cut (``cut``: the ranks' agreed name for it)."""

    cut: str
    count: int


@dataclass(frozen=True)
class DeltaRecord:
    """One stored delta: its metadata and its safetensors (models/base.py ``delta_bytes``)."""

    lineage: str
    seq: int
    meta: DeltaMeta
    weights: bytes
    shards: tuple[bytes, ...] = ()  # a delta of ranks: every rank's (``weights`` is then empty)


@dataclass(frozen=True)
class Version:
    """One stored version. The worker-side state (``quality_state``, ``source_state``,
    ``history``) is read only when a trainer resumes (``with_state``)."""

    number: int
    meta: VersionMeta
    weights: bytes
    quality_state: bytes | None = None  # safetensors of the streaming metrics (stream/quality_metrics.py)
    source_state: bytes | None = None   # JSON of the joiner or example queue
    history: bytes | None = None        # JSON of users' recent clicks (sequence models only)
    shards: tuple[bytes, ...] = ()      # the weights as every rank's shard (``weights`` is then empty)

    @property
    def model_blob(self) -> bytes:
        """A blob whose safetensors metadata names the model, its spec and config: the weights,
        or a version of ranks' first shard (every shard carries them)."""
        return self.shards[0] if self.shards else self.weights


def champion(client: redis.Redis, namespace: str) -> str | None:
    """The model a champion-following scorer serves, or None while none is named."""
    value = client.get(redis_keys.champion(namespace))
    return None if value is None else value.decode()


def set_champion(client: redis.Redis, namespace: str, model: str, *, by: str | None = None,
                 reason: str | None = None) -> None:
    """Make ``model`` the namespace's champion, tell champion-following scorers, and log a
    ``champion`` event on that model's timeline."""
    store = VersionStore(client, namespace, model)
    with client.pipeline(transaction=True) as pipe:
        live = client.get(store.keys.live)
        pipe.set(redis_keys.champion(namespace), model)
        pipe.publish(redis_keys.champion_channel(namespace), model)
        store._log_event(pipe, "champion", 0 if live is None else int(live), None if live is None else int(live),
                         reason, by)
        pipe.execute()


class VersionStore:
    """The versions, pointers, deltas and event log of one model in one namespace."""

    def __init__(self, client: redis.Redis, namespace: str, model: str) -> None:
        self.client = client
        self.namespace = namespace
        self.model = model
        self.keys = redis_keys.ModelKeys(namespace, model)

    # ------------------------------------------------------------------ reads

    def head(self) -> int | None:
        value = self.client.get(self.keys.head)
        return None if value is None else int(value)

    def live(self) -> int | None:
        value = self.client.get(self.keys.live)
        return None if value is None else int(value)

    def pinned(self) -> bool:
        return bool(self.client.exists(self.keys.pinned))

    def pointers(self) -> tuple[int | None, int | None, bool]:
        """(live, head, pinned), read together."""
        live, head, pinned = self.client.mget(self.keys.live, self.keys.head, self.keys.pinned)
        return (None if live is None else int(live), None if head is None else int(head), pinned is not None)

    def versions(self) -> list[int]:
        return [int(v) for v in self.client.zrange(self.keys.versions, 0, -1)]

    def previous_promoted(self, before: int) -> int | None:
        """The newest kept version older than ``before`` that went live through the quality gate:
        where a rollback goes, never to a version the gate held."""
        for number in reversed(self.versions()):
            if number < before and self.meta(number).promoted:
                return number
        return None

    def annotate(self, number: int, description: str | None, tags: Sequence[str], *,
                 by: str | None = None) -> dict[str, Any]:
        """Set a version's description and tags (``models annotate``); they sit beside its immutable
        meta, and the change goes on the timeline. Return the annotation."""
        keys = self.keys
        annotation = {"description": description or "", "tags": sorted(set(tags)), "at": time.time()}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.version(number))
            if not pipe.exists(keys.version(number)):
                pipe.reset()
                raise StreamrecError(f"model {self.model!r} has no version {number} (kept: {self.versions()})")
            pipe.multi()
            pipe.hset(keys.version(number), "annotation", orjson.dumps(annotation))
            self._log_event(pipe, "annotate", number, None, " ".join(
                [annotation["description"], *(f"#{t}" for t in annotation["tags"])]).strip() or None, by)
            try:
                pipe.execute()
            except redis.WatchError:
                raise StreamrecError(f"model {self.model!r}: version {number} was removed meanwhile") from None
        return annotation

    def annotation(self, number: int) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys.version(number), "annotation")
        return None if raw is None else orjson.loads(raw)

    def events(self, limit: int = EVENTS_KEPT) -> list[dict[str, Any]]:
        """Pointer events, oldest first (the dashboard's version timeline)."""
        return [orjson.loads(e) for e in reversed(self.client.lrange(self.keys.events, 0, limit - 1))]

    def meta(self, number: int) -> VersionMeta:
        raw = self.client.hget(self.keys.version(number), "meta")
        if raw is None:
            raise StreamrecError(f"model {self.model!r} has no version {number} in namespace {self.namespace!r}")
        return VersionMeta.from_dict(orjson.loads(raw))

    def load(self, number: int, *, with_state: bool = True) -> Version:
        fields = ["meta", "weights", "trainer", "joiner", "history"] if with_state else ["meta", "weights"]
        values = self.client.hmget(self.keys.version(number), fields)
        if values[0] is None or values[1] is None:
            raise StreamrecError(f"model {self.model!r} has no version {number} in namespace {self.namespace!r}")
        meta = VersionMeta.from_dict(orjson.loads(values[0]))
        shards: tuple[bytes, ...] = ()
        if meta.shards:
            found = self.client.mget([self.keys.version_shard(number, r) for r in range(meta.shards)])
            missing = [r for r, blob in enumerate(found) if blob is None]
            if missing:  # removed meanwhile (pruned), never half-published
                raise StreamrecError(f"model {self.model!r}: version {number} lacks shards {missing} of {meta.shards}")
            shards = tuple(found)
        return Version(number, meta, values[1], *(values[2:] if with_state else (None, None, None)), shards=shards)

    def stage_shard(self, cut: str, shard: int, blob: bytes, ttl_s: float) -> None:
        """Write a rank's shard of the version cut ``cut``; it expires unless :meth:`publish` takes it."""
        self.client.set(self.keys.staged_shard(cut, shard), blob, ex=max(1, int(ttl_s)))

    def staged(self, shards: StagedShards) -> int:
        """How many of the cut's shards are staged."""
        return int(self.client.exists(*(self.keys.staged_shard(shards.cut, r) for r in range(shards.count))))

    def history(self, number: int) -> bytes | None:
        """A version's behaviour histories (JSON), or None if it has none."""
        return self.client.hget(self.keys.version(number), "history")

    def delta_head(self) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.delta_head)
        return None if raw is None else orjson.loads(raw)

    def load_delta(self, lineage: str, seq: int) -> DeltaRecord | None:
        """A delta, or None if it expired or was never written (a gap)."""
        meta, weights = self.client.hmget(self.keys.delta(lineage, seq), ["meta", "weights"])
        if meta is None or weights is None:
            return None
        parsed = DeltaMeta.from_dict(orjson.loads(meta))
        shards: tuple[bytes, ...] = ()
        if parsed.shards:
            found = self.client.mget([self.keys.delta_shard(lineage, seq, r) for r in range(parsed.shards)])
            if any(blob is None for blob in found):  # expired with it: a gap, as a missing delta is
                return None
            shards = tuple(found)
        return DeltaRecord(lineage, seq, parsed, weights, shards)

    # ------------------------------------------------------------------ writes

    def record_event(self, kind: str, version: int, live: int | None, reason: str | None) -> None:
        """Log a pointer event that :meth:`publish` and :meth:`set_live` do not log themselves."""
        with self.client.pipeline(transaction=True) as pipe:
            self._log_event(pipe, kind, version, live, reason)
            pipe.execute()

    def _log_event(self, pipe: Any, kind: str, version: int, live: int | None, reason: str | None,
                   by: str | None = None) -> None:
        event = {"at": time.time(), "kind": kind, "version": version, "live": live, "reason": reason}
        if by:  # who moved it by hand: the CLI's user@host, or the dashboard's operator and address
            event["by"] = by
        pipe.lpush(self.keys.events, orjson.dumps(event))
        pipe.ltrim(self.keys.events, 0, EVENTS_KEPT - 1)

    def publish_delta(self, meta: DeltaMeta, weights: bytes, ttl_s: float, shards: StagedShards | None = None) -> None:
        """Store a delta (``meta.lineage``, ``meta.seq``), make it the newest, announce it. With
        ``shards`` its weights are the shards ranks staged, moved under it in the same transaction
        (:class:`MissingShard` if one is not staged: nothing is written)."""
        meta = dataclasses.replace(meta, model=self.model, created_at=time.time(), shards=shards.count if shards else 0)
        head = {"lineage": meta.lineage, "seq": meta.seq, "base_version": meta.base_version}
        staged = [self.keys.staged_shard(shards.cut, r) for r in range(shards.count)] if shards else []
        with self.client.pipeline(transaction=True) as pipe:
            if staged:
                pipe.watch(*staged)
                if pipe.exists(*staged) != len(staged):
                    pipe.reset()
                    raise MissingShard(f"model {self.model!r}: delta {meta.lineage}:{meta.seq} lacks staged shards")
                pipe.multi()
            for r, staged_key in enumerate(staged):
                shard_key = self.keys.delta_shard(meta.lineage, meta.seq, r)
                pipe.rename(staged_key, shard_key)
                pipe.expire(shard_key, max(1, int(ttl_s)))
            key = self.keys.delta(meta.lineage, meta.seq)
            pipe.hset(key, mapping={"meta": orjson.dumps(meta.to_dict()), "weights": weights})
            pipe.expire(key, max(1, int(ttl_s)))
            pipe.set(self.keys.delta_head, orjson.dumps(head))
            pipe.publish(self.keys.announce, orjson.dumps({"delta": meta.seq, "lineage": meta.lineage}))
            try:
                pipe.execute()
            except redis.WatchError:  # a staged shard expired meanwhile
                raise MissingShard(f"model {self.model!r}: delta {meta.lineage}:{meta.seq} lost a staged shard") from None

    def publish(self, *, parent: int | None, meta: VersionMeta, weights: bytes, quality_state: bytes,
                source_state: bytes, keep: int, promote: bool = True, history: bytes | None = None,
                shards: StagedShards | None = None) -> int:
        """Write version ``parent + 1`` and move head to it, atomically; live moves too unless
        pinned or ``promote`` is False (the quality gate held the version). With ``shards`` the
        weights are the staged shards, moved under the version in the same transaction
        (:class:`MissingShard` if one is not staged: nothing is written)."""
        number = (parent or 0) + 1
        meta = dataclasses.replace(meta, model=self.model, version=number, parent=parent, created_at=time.time(),
                                   shards=shards.count if shards else 0)
        keys = self.keys
        staged = [keys.staged_shard(shards.cut, r) for r in range(shards.count)] if shards else []
        # head, live and pinned are all watched: a `models pin` or `promote` landing between the
        # reads below and EXEC makes the transaction retry with what it set, instead of being
        # overwritten. Only a moved head is a conflict (checked again on every attempt).
        for _attempt in range(PUBLISH_ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(keys.head, keys.live, keys.pinned, *staged)
                if staged and pipe.exists(*staged) != len(staged):
                    pipe.reset()
                    raise MissingShard(f"model {self.model!r}: {len(staged) - self.staged(shards)} of the "
                                       f"{len(staged)} shards of cut {shards.cut} are not staged")
                current = pipe.get(keys.head)
                current = None if current is None else int(current)
                if current is None and parent is not None:
                    # Redis came back empty (a restart without persistence): keep the trainer's state
                    # and keep numbering upwards, so scorers never see a version number go back.
                    log.warning("model %r: head version missing in Redis (restarted empty?); "
                                "continuing the lineage at version %d", self.model, number)
                    meta = dataclasses.replace(meta, history_lost=True)
                elif current != parent:
                    pipe.reset()
                    raise VersionConflict(
                        f"model {self.model!r} in namespace {self.namespace!r} is at version {current}, but this "
                        f"trainer continues version {parent}: run one trainer per model (or a new namespace)")
                pinned = pipe.exists(keys.pinned)
                live = pipe.get(keys.live)
                kept = [int(v) for v in pipe.zrange(keys.versions, 0, -1)]
                hold = pinned or not promote
                new_live = int(live) if (hold and live is not None) else (None if hold else number)
                retained = sorted(kept + [number])
                drop = [v for v in retained[:-keep] if v != new_live] if keep > 0 else []
                dropped_shards = [keys.version_shard(old, r) for old in drop
                                  for r in range(int(pipe.hget(keys.version(old), "shards") or 0))]
                pipe.multi()
                # hash field names are those of the first versions, so old versions still load
                fields = {"meta": orjson.dumps(meta.to_dict()), "weights": weights, "trainer": quality_state,
                          "joiner": source_state}
                if history is not None:
                    fields["history"] = history
                if shards:
                    fields["shards"] = shards.count
                for r, key in enumerate(staged):
                    pipe.rename(key, keys.version_shard(number, r))
                    pipe.persist(keys.version_shard(number, r))
                pipe.hset(keys.version(number), mapping=fields)
                pipe.set(keys.head, number)
                if new_live is not None:
                    pipe.set(keys.live, new_live)
                pipe.zadd(keys.versions, {str(number): number})
                for old in drop:
                    pipe.delete(keys.version(old))
                    pipe.zrem(keys.versions, str(old))
                if dropped_shards:
                    pipe.delete(*dropped_shards)
                if hold:
                    reason = "pinned" if pinned else (meta.gate.reason if meta.gate else None)
                    self._log_event(pipe, "held", number, new_live, reason)
                else:
                    self._log_event(pipe, "published", number, number, None)
                pipe.publish(keys.announce, orjson.dumps({"version": number, "live": new_live}))
                try:
                    pipe.execute()
                    return number
                except redis.WatchError:
                    continue
        raise VersionConflict(f"model {self.model!r}: the pointers kept changing during {PUBLISH_ATTEMPTS} "
                              "publish attempts; run one trainer per model")

    def unpin(self, *, by: str | None = None, reason: str | None = None) -> int | None:
        """Let the trainer move ``live`` again, and serve at once what it would serve: the newest
        version if the quality gate promoted it (else ``live`` stays until the gate promotes one).
        Scorers are told in the same transaction. Return the live version."""
        keys = self.keys
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.head, keys.live)
                    head, live = pipe.get(keys.head), pipe.get(keys.live)
                    target = None if live is None else int(live)
                    if head is not None and int(head) != target and self.meta(int(head)).promoted:
                        target = int(head)
                    pipe.multi()
                    pipe.delete(keys.pinned)
                    if target is not None and (live is None or target != int(live)):
                        pipe.set(keys.live, target)
                        self._log_event(pipe, "promote", target, target, "unpinned: the newest promoted version", by)
                    self._log_event(pipe, "unpin", target or 0, target, reason, by)
                    pipe.publish(keys.announce, orjson.dumps({"version": None if head is None else int(head),
                                                              "live": target}))
                    pipe.execute()
                    return target
                except redis.WatchError:
                    continue

    def set_live(self, number: int, *, pin: bool, kind: str = "promote", reason: str | None = None,
                 by: str | None = None) -> None:
        """Point ``live`` at an existing version; ``pin`` keeps the trainer from moving it.
        ``kind`` (promote, rollback, pin) and ``reason`` go to the event log.

        The version key is watched, so a publish that prunes it meanwhile makes this fail cleanly
        instead of leaving ``live`` on a deleted version."""
        keys = self.keys
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.version(number))
            if not pipe.exists(keys.version(number)):
                pipe.reset()
                raise StreamrecError(f"model {self.model!r} has no version {number} (kept: {self.versions()})")
            head = pipe.get(keys.head)
            pipe.multi()
            pipe.set(keys.live, number)
            if pin:
                pipe.set(keys.pinned, 1)
            else:
                pipe.delete(keys.pinned)
            self._log_event(pipe, kind, number, number, reason, by)
            pipe.publish(keys.announce, orjson.dumps({"version": None if head is None else int(head), "live": number}))
            try:
                pipe.execute()
            except redis.WatchError:
                raise StreamrecError(f"model {self.model!r}: version {number} was removed while being made live; "
                                     f"kept: {self.versions()}") from None
