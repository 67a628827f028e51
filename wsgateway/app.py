"""The gateway's aiohttp application: typed state, resources opened and closed with the app."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from monitoring.metrics import Metrics
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from wsgateway import auth, health, http_api
from wsgateway.state import ENGINE, EXECUTOR, METRICS, REDIS, RELAY, SETTINGS
from wsgateway.ws import WsOptions, setup_websocket

log = logging.getLogger("wsgateway")

BLOCKING_THREADS = 8  # database and relay calls in flight at once per process
REDIS_CONNECT_TIMEOUT = 1.0
REDIS_SOCKET_TIMEOUT = 2.0
REDIS_POOL_SIZE = 50
REDIS_POOL_WAIT = 5.0  # seconds a request may wait for a pooled Redis connection


def create_app(settings: Settings, metrics: Metrics, *, engine: Engine | None = None,
               extend: Callable[[web.Application, Settings], None] | None = None,
               ws_options: WsOptions | None = None) -> web.Application:
    """The web process's application, recording into ``metrics`` (the process's own); pass
    ``engine`` to share one (the caller disposes it).

    ``extend(app, settings)`` adds routes of the caller's own (``paxyo demo``'s page);
    ``ws_options`` tunes /ws and its hub (defaults when None).
    """
    app = web.Application(middlewares=[http_api.error_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app.cleanup_ctx.append(functools.partial(_resources, engine=engine))
    setup_websocket(app, settings, ws_options)  # after _resources: /ws uses its Redis and engine
    health.add_routes(app)
    app.add_subapp("/v1", http_api.create_api())
    if extend is not None:
        extend(app, settings)
    return app


async def _resources(app: web.Application, *, engine: Engine | None) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    auth.warn_if_weak_secret(settings.jwt_secret)
    own_engine = engine is None
    app[ENGINE] = open_engine(settings.database_url) if engine is None else engine
    app[EXECUTOR] = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="paxyo-blocking")
    # A blocking pool: a burst of reconnecting sockets waits for a connection to greet them
    # instead of failing with "Too many connections".
    app[REDIS] = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT, socket_timeout=REDIS_SOCKET_TIMEOUT))
    # One quick retry: an HTTP answer waits for this publish, and the sweeper covers failures.
    sync_redis = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        socket_timeout=REDIS_SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 1))
    app[RELAY] = OutboxRelay(app[ENGINE], sync_redis, RelayConfig(
        Keys(settings.redis_prefix), settings.history_size, settings.history_ttl),
        on_published=app[METRICS].events_published.inc)
    try:
        yield
    finally:
        await app[REDIS].aclose()
        app[EXECUTOR].shutdown(wait=True)
        sync_redis.close()
        if own_engine:
            app[ENGINE].dispose()
