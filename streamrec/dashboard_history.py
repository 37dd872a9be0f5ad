"""The dashboard's sampled points, kept in Redis so that a restarted dashboard shows its past.

Two Redis streams per namespace (stream/redis_keys.py ``dashboard_samples``): ``fine`` gets every
tick and keeps the newest ``fine_points`` (an hour at one sample a second), ``coarse`` gets one
tick per ``coarse_step_s`` and keeps ``coarse_points`` (a day at 30 s). An entry is one tick:
``{"t": unix time, "rows": {worker key: [role, model, worker, url, stopped, {name: value}]}}``.
Both are trimmed approximately (``MAXLEN ~``), which Redis does in whole blocks, cheaply.

Only one dashboard of a namespace writes: it holds a lease (``dashboard:writer``) renewed every
tick, so two dashboards watching one namespace do not store every point twice; the other one
takes over when the writer stops renewing. Redis being down costs the history, never a tick.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from streamrec.stream import redis_keys

log = logging.getLogger(__name__)
LEASE_S = 10
Row = list[Any]  # [role, model, worker, url, stopped, {name: value}]


@dataclass(frozen=True)
class HistorySettings:
    """How much of the past the dashboard keeps, in memory and in Redis."""

    fine_points: int = 3600
    coarse_step_s: float = 30.0
    coarse_points: int = 2880


class SampleHistory:
    """Write the collector's ticks to Redis and read them back when a dashboard starts."""

    def __init__(self, client: redis.Redis, namespace: str, settings: HistorySettings | None = None) -> None:
        self.client, self.namespace = client, namespace
        self.settings = settings or HistorySettings()
        self.writer_id = uuid.uuid4().hex
        self.lease_key = redis_keys.dashboard_writer(namespace)

    def key(self, resolution: str) -> str:
        return redis_keys.dashboard_samples(self.namespace, resolution)

    def holds_lease(self) -> bool:
        """Take or renew the writer's lease; False while another dashboard holds it."""
        if self.client.set(self.lease_key, self.writer_id, nx=True, ex=LEASE_S):
            return True
        if self.client.get(self.lease_key) == self.writer_id.encode():
            self.client.expire(self.lease_key, LEASE_S)
            return True
        return False

    def append(self, at: float, rows: dict[str, Row], coarse: bool) -> bool:
        """Store one tick (and in the coarse stream too when ``coarse``); False if not the writer
        or Redis failed (the tick is still shown, only not kept)."""
        try:
            if not self.holds_lease():
                return False
            entry = {"e": orjson.dumps({"t": at, "rows": rows})}
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.key("fine"), entry, maxlen=self.settings.fine_points, approximate=True)
                if coarse:
                    pipe.xadd(self.key("coarse"), entry, maxlen=self.settings.coarse_points, approximate=True)
                pipe.execute()
            return True
        except redis.RedisError as exc:
            log.warning("dashboard history not stored: %s", exc)
            return False

    def load(self, resolution: str) -> list[tuple[float, dict[str, Row]]]:
        """Every stored tick of one resolution, oldest first (the streams are capped, so that is
        the past the dashboard keeps)."""
        out = []
        for _id, fields in self.client.xrange(self.key(resolution)):
            try:
                tick = orjson.loads(fields[b"e"])
                out.append((float(tick["t"]), dict(tick["rows"])))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
                continue  # an entry this version cannot read is skipped, not fatal
        return out

    def release(self) -> None:
        """Give up the lease at once on a clean stop, so another dashboard takes over."""
        try:
            if self.client.get(self.lease_key) == self.writer_id.encode():
                self.client.delete(self.lease_key)
        except redis.RedisError:
            pass
