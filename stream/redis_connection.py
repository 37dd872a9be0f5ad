"""Redis connections: one way to open a client, and waiting out an outage with exponential back-off."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


def retry_while_unavailable(what: str, action: Callable[[], Any], stop_event: threading.Event, *,
                            backoff_max_s: float = 30.0, on_failure: Callable[[], None] | None = None) -> Any:
    """``action()``, retried after 0.5 s, 1 s, 2 s ... (at most ``backoff_max_s``) while Redis is
    unreachable; a stop request ends the wait by raising the last connection error."""
    delay = 0.5
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if stop_event.is_set():
                raise
            log.warning("redis unavailable while %s (%s); retrying in %.1fs", what, exc, delay)
            if on_failure is not None:
                on_failure()
            stop_event.wait(delay)
            delay = min(delay * 2, backoff_max_s)


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
