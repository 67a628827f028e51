"""``paxyo gateway``: serve the web process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from monitoring.metrics import Metrics
from paxyo.settings import Settings
from wsgateway.app import create_app

# Seconds to let requests in flight finish after SIGTERM; well inside Heroku's 30 s grace.
SHUTDOWN_TIMEOUT = 10.0


def run_gateway(settings: Settings, metrics: Metrics, host: str = "0.0.0.0",
                extend: Callable[[web.Application, Settings], None] | None = None) -> None:
    """Serve on ``host:settings.port``; SIGTERM stops accepting, shuts down and returns.

    ``extend`` adds the caller's own routes (see :func:`wsgateway.app.create_app`).
    """
    url = f"http://{host}:{settings.port}"
    web.run_app(
        create_app(settings, metrics, extend=extend), host=host, port=settings.port,
        loop=_new_loop(), shutdown_timeout=SHUTDOWN_TIMEOUT,
        print=lambda _banner: print(f"paxyo gateway listening on {url}", flush=True))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
