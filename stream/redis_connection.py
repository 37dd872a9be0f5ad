"""Redis connections: one way to open a client, and one exponential back-off for outages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class Backoff:
    """Exponential back-off after failures: ``first_s``, twice that, ... at most ``max_s``; a
    success starts it over. ``ready()`` says whether the next try is due."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.delay_s = 0.0
        self._next_try = 0.0

    def failed(self) -> float:
        """Record a failure; return the seconds until the next try."""
        self.delay_s = min(max(2 * self.delay_s, self.first_s), self.max_s)
        self._next_try = time.monotonic() + self.delay_s
        return self.delay_s

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self._next_try = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._next_try

    @property
    def seconds_to_next_try(self) -> float:
        return max(0.0, self._next_try - time.monotonic())

    @property
    def exhausted(self) -> bool:
        """The delay has reached its maximum: waiting longer will not be any shorter."""
        return self.delay_s >= self.max_s


def retry_while_unavailable(what: str, action: Callable[[], Any], stop_event: threading.Event, *,
                            backoff_max_s: float = 30.0, on_failure: Callable[[], None] | None = None) -> Any:
    """``action()``, retried with :class:`Backoff` while Redis is unreachable; a stop request ends
    the wait by raising the last connection error."""
    backoff = Backoff(max_s=backoff_max_s)
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if stop_event.is_set():
                raise
            delay = backoff.failed()
            log.warning("redis unavailable while %s (%s); retrying in %.1fs", what, exc, delay)
            if on_failure is not None:
                on_failure()
            stop_event.wait(delay)
