"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text

from monitoring.metrics import REGISTRY
from wsgateway.app import ENGINE, REDIS, run_blocking
from wsgateway.http_api import json_response

log = logging.getLogger("wsgateway.health")

CHECK_TIMEOUT = 2.0  # seconds a dependency may take to answer a readiness probe


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


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
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


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
