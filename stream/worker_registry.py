"""Workers announce where their Prometheus metrics are, so ``streamrec dashboard`` finds them.

Each trainer and scorer keeps one key alive while it runs::

    streamrec:<namespace>:worker:<role>:<model>:<worker>
        JSON {"role", "model", "worker", "metrics_url", "pid", "started_at"}, expires after TTL_S
    streamrec:<namespace>:workers
        set of those key names (members whose key expired are dropped by readers)

A heartbeat thread refreshes the key every ``TTL_S / 3``; a worker that dies simply expires, so
the registry never needs a clean shutdown. A worker that stops cleanly leaves its final metrics
text in the record (``stopped_at``, ``final_metrics``) for ``STOPPED_TTL_S``, so a short run's
last numbers still reach the dashboard after its HTTP endpoint is gone. A worker that cannot reach Redis keeps working and
tries again at the next beat: the registry is advisory, training and serving never wait on it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from streamrec.stream import redis_keys

log = logging.getLogger(__name__)
TTL_S = 15.0
STOPPED_TTL_S = 600.0


def metrics_url(host: str, port: int, path: str = "/metrics") -> str:
    """The URL others use to scrape a server bound to ``host``. A wildcard bind advertises this
    host's address: in a container or a Kubernetes pod the host name resolves (through
    /etc/hosts) to the address other containers reach, while the name itself may not resolve there."""
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.gethostname()
    return f"http://{host}:{port}{path}"


def workers(client: redis.Redis, namespace: str) -> list[dict[str, Any]]:
    """The workers alive now, sorted by role, model and worker id."""
    keys = sorted(k.decode() for k in client.smembers(redis_keys.workers_index(namespace)))
    if not keys:
        return []
    values = client.mget(keys)
    alive, gone = [], []
    for key, value in zip(keys, values, strict=True):
        if value is None:
            gone.append(key)
        else:
            alive.append(orjson.loads(value))
    if gone:
        client.srem(redis_keys.workers_index(namespace), *gone)
    return sorted(alive, key=lambda w: (w["role"], w["model"], w["worker"]))


class Heartbeat:
    """Keeps one worker's registry key alive from a daemon thread until :meth:`close`."""

    def __init__(self, client: redis.Redis, namespace: str, *, role: str, model: str, worker: str,
                 url: str, ttl_s: float = TTL_S, final_metrics: Callable[[], bytes] | None = None) -> None:
        self.client, self.namespace, self.ttl_s = client, namespace, ttl_s
        self.final_metrics = final_metrics
        self.key = redis_keys.worker(namespace, role, model, worker)
        self.record = {"role": role, "model": model, "worker": worker, "metrics_url": url, "pid": os.getpid(),
                       "started_at": time.time()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> bool:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.key, orjson.dumps(self.record), px=int(self.ttl_s * 1000))
                pipe.sadd(redis_keys.workers_index(self.namespace), self.key)
                pipe.execute()
            return True
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.debug("worker registry unavailable: %s", exc)
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.beat()

    def close(self) -> None:
        """Stop beating; leave the final metrics behind for a while, or remove the key."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        try:
            if self.final_metrics is None:
                self.client.delete(self.key)
                self.client.srem(redis_keys.workers_index(self.namespace), self.key)
                return
            record = {**self.record, "stopped_at": time.time(), "final_metrics": self.final_metrics().decode()}
            self.client.set(self.key, orjson.dumps(record), px=int(STOPPED_TTL_S * 1000))
        except (redis.ConnectionError, redis.TimeoutError):
            pass
