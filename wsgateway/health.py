"""Liveness, readiness and Prometheus metrics.

``/metrics`` serves the whole cluster (every process's pushed registry merged, plus gauges read
from the database and Redis at scrape time; see :mod:`monitoring.collectors`). A background task
pushes this process's own registry and writes its gateway heartbeat every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, text

from monitoring.collectors import cluster_registry, render
from monitoring.push import PUSH_INTERVAL, MetricsPusher
from paxyo import ops
from paxyo.keys import Keys
from wsgateway.responses import json_response
from wsgateway.state import ENGINE, METRICS, REDIS, SETTINGS, run_blocking
from wsgateway.tasks import cancel_and_wait

log = logging.getLogger("wsgateway.health")

CHECK_TIMEOUT = 2.0  # seconds a dependency may take to answer a readiness probe
METRICS_REDIS_TIMEOUT = 2.0

PUSHER = web.AppKey("metrics_pusher", MetricsPusher)
CLUSTER = web.AppKey("cluster_registry", CollectorRegistry)


def add_routes(app: web.Application) -> None:
    """Health and metrics routes, and the task that pushes metrics and the gateway heartbeat."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_metrics_pusher)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when both the database and Redis answer; 503 names what does not."""
    state = request.config_dict
    database, redis_state = await asyncio.gather(
        _check("database", run_blocking(state, _select_one, state[ENGINE])),
        _check("redis", state[REDIS].ping()))
    body = {"database": database, "redis": redis_state}
    down = [name for name, state in body.items() if state != "ok"]
    if down:
        return json_response({"status": "unavailable", **body,
                              "error": f"{' and '.join(down)} unreachable"}, 503)
    return json_response({"status": "ready", **body})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format for the whole cluster (blocking reads run in the thread pool)."""
    state = request.config_dict
    body = await run_blocking(state, render, state[CLUSTER])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics_pusher(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    keys = Keys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=METRICS_REDIS_TIMEOUT,
                                  socket_connect_timeout=METRICS_REDIS_TIMEOUT,
                                  retry=Retry(NoBackoff(), 1))
    app[PUSHER] = pusher = MetricsPusher(app[METRICS].registry, client, keys, "web")
    app[CLUSTER] = cluster_registry(settings, app[ENGINE], client, own=pusher)
    task = asyncio.create_task(_push_forever(app, pusher, keys))
    try:
        yield
    finally:
        await cancel_and_wait(task)
        await run_blocking(app, _leave, pusher, keys)
        client.close()


async def _push_forever(app: web.Application, pusher: MetricsPusher, keys: Keys) -> None:
    while True:
        await run_blocking(app, _beat, pusher, keys)
        await asyncio.sleep(PUSH_INTERVAL)


def _beat(pusher: MetricsPusher, keys: Keys) -> None:
    if pusher.push_quietly():
        with contextlib.suppress(redis.RedisError):
            ops.beat_gateway(pusher.client, keys, pusher.process_id)


def _leave(pusher: MetricsPusher, keys: Keys) -> None:
    pusher.push_quietly()
    with contextlib.suppress(redis.RedisError):
        pusher.client.zrem(keys.gateways, pusher.process_id)


async def _check(name: str, probe) -> str:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:  # any failure means "not ready"
        log.warning("readiness: %s unreachable: %s", name, exc)
        return "unreachable"
    return "ok"


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
