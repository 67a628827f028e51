"""Wait out a Redis outage: capped exponential backoff, one log line when it starts, one when
Redis answers again (the dispatcher's and the gateway's style)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
)

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

FIRST_DELAY = 1.0
MAX_DELAY = 10.0
PROBE_TIMEOUT = 5.0  # a probe never hangs on a Redis that accepts and does not answer
STOP_POLL = 0.25  # how soon a stop request ends a wait


def redis_location(url: str) -> str:
    """``host:port/db`` of a Redis URL, without its credentials (for logs)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


class RedisOutage:
    """Blocks until the Redis at ``url`` answers a PING, backing off from ``first`` to ``cap``
    seconds between probes. ``level`` is the level of the outage line; the recovery line is
    INFO (or ``level``, if lower: a child process whose parent already reports the outage
    passes ``logging.DEBUG``)."""

    def __init__(self, url: str, log: logging.Logger, *, first: float = FIRST_DELAY,
                 cap: float = MAX_DELAY, level: int = logging.ERROR) -> None:
        self.location = redis_location(url)
        self.log = log
        self.first = first
        self.cap = cap
        self.level = level
        self._probe = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT,
                                           socket_connect_timeout=PROBE_TIMEOUT)

    def wait(self, error: Exception, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait until Redis answers (True) or ``stopping()`` turns true first (False)."""
        self.log.log(self.level, "Redis unavailable at %s (%s); retrying in %gs, backing off "
                     "to %gs", self.location, _one_line(error), self.first, self.cap)
        started = time.monotonic()

        def stop(state: RetryCallState) -> bool:
            return stopping()

        def sleep(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while not stopping() and (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, STOP_POLL))

        retrying = Retrying(retry=retry_if_exception_type(REDIS_DOWN),
                            wait=wait_exponential(multiplier=self.first, min=self.first,
                                                  max=self.cap),
                            stop=stop,
                            sleep=sleep, reraise=True)
        try:
            retrying(self._probe.ping)
        except REDIS_DOWN:
            return False  # stopped before Redis answered
        self.log.log(min(self.level, logging.INFO), "Redis at %s is back after %.0fs",
                     self.location, time.monotonic() - started)
        return True

    def close(self) -> None:
        self._probe.close()


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
