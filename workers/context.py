"""Per-process resources of a worker, built once and reused by jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis
from sqlalchemy import Engine

from monitoring.metrics import METRICS
from paxyo.keys import Keys
from paxyo.protection import CircuitBreaker, RateLimiter
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from providers.client import ProviderClient

T = TypeVar("T")


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    relay: OutboxRelay
    limiter: RateLimiter
    breaker: CircuitBreaker
    # One event loop and HTTP session for the process's life: keep-alive connections to the
    # providers and no loop set-up per shard.
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _session: aiohttp.ClientSession | None = None
    _clients: dict[str, ProviderClient] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on the worker's own loop (jobs run one at a time)."""
        return self.loop.run_until_complete(coro)

    def provider(self, name: str) -> ProviderClient:
        """The client of a configured provider, sharing the process's HTTP session."""
        client = self._clients.get(name)
        if client is None:
            if self._session is None or self._session.closed:
                self._session = self.run(_new_session())
            client = ProviderClient(self.settings.providers[name], self._session,
                                    metrics=METRICS,
                                    timeout=self.settings.provider_timeout,
                                    attempts=self.settings.provider_attempts)
            self._clients[name] = client
        return client

    def close(self) -> None:
        if self._session is not None and not self._session.closed:
            self.run(self._session.close())
        self.loop.close()
        self.engine.dispose()
        self.redis.close()


async def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30))


def build_context(settings: Settings) -> WorkerContext:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                  socket_connect_timeout=5, health_check_interval=30)
    engine = open_engine(settings.database_url)
    keys = Keys(settings.redis_prefix)
    return WorkerContext(
        settings=settings,
        engine=engine,
        redis=client,
        relay=OutboxRelay(engine, client, RelayConfig(keys, settings.history_size,
                                                      settings.history_ttl),
                          on_published=METRICS.events_published.inc),
        limiter=RateLimiter(client, keys, settings.provider_rate_limit_per_min),
        breaker=CircuitBreaker(client, keys),
    )


_current: WorkerContext | None = None


def install_context(ctx: WorkerContext | None) -> None:
    """Make ``ctx`` the context this process's jobs run with (``paxyo worker`` installs the
    one built from the settings its command line parsed); ``None`` forgets it."""
    global _current
    _current = ctx


def current_context() -> WorkerContext:
    """The installed context; one built from the environment when none was installed."""
    global _current
    if _current is None:
        _current = build_context(Settings.from_env())
    return _current
