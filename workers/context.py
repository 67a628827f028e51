"""Per-process resources of a worker, built once by ``paxyo worker`` and reused by jobs.

RQ calls a job by its dotted path with the arguments it stored; the worker hands the job its
context in memory (:class:`ContextJob`), so nothing here is cached at module level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis
from rq.job import Job, get_current_job
from sqlalchemy import Engine

from monitoring.metrics import Metrics
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
    metrics: Metrics
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
                                    metrics=self.metrics,
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


def build_context(settings: Settings, metrics: Metrics) -> WorkerContext:
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
                          on_published=metrics.events_published.inc),
        limiter=RateLimiter(client, keys, settings.provider_rate_limit_per_min),
        breaker=CircuitBreaker(client, keys),
        metrics=metrics,
    )


class ContextJob(Job):
    """An RQ job that carries, while a worker performs it, that worker's context (in memory
    only: RQ stores a job's fields explicitly, never this attribute)."""

    context: WorkerContext | None = None


def job_context() -> WorkerContext:
    """The context of the worker performing the current job."""
    job = get_current_job()
    context = job.context if isinstance(job, ContextJob) else None
    if context is None:
        raise RuntimeError("this job runs only in a paxyo worker, which hands it its context")
    return context
