"""Per-process resources of a worker, built once from the environment and reused by jobs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from sqlalchemy import Engine

from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from workers.protection import CircuitBreaker, RateLimiter


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    relay: OutboxRelay
    limiter: RateLimiter
    breaker: CircuitBreaker


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
                                                      settings.history_ttl)),
        limiter=RateLimiter(client, keys, settings.provider_rate_limit_per_min),
        breaker=CircuitBreaker(client, keys),
    )


@functools.cache
def current_context() -> WorkerContext:
    """The context of this worker process (settings read from the environment once)."""
    return build_context(Settings.from_env())
