"""The /ws endpoint: authenticate, greet, replay the user's history, then stream live events.

``GET /ws?token=<JWT>&last_id=<event id>``. A bad token is refused with HTTP 401 before the
upgrade and a foreign Origin with 403. The first message is the hello (user, balance, the
latest event id, whether everything after ``last_id`` follows); then the missed events from
the user's history, then live events from the process's :class:`~wsgateway.hub.Hub`. The
socket is registered with the hub *before* the history is read, so nothing published in
between is lost; the hub holds those live events back and drops the ones the replay sent.

aiohttp checks the upgrade request and refusals are its plain HTTP answers; an accepted socket
is taken over by its :class:`~wsgateway.hub.Subscriber` (:func:`wsgateway.connection.take_over`)
before the hello, and the handler returns once the replay is sent, freeing aiohttp's objects.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from paxyo.accounts import get_balance
from paxyo.keys import Keys
from paxyo.money import ZERO, format_money
from paxyo.settings import Settings
from wsgateway import hub as hub_module
from wsgateway.auth import TokenError, verify_token
from wsgateway.close_codes import CloseCode
from wsgateway.connection import TakenOver, take_over
from wsgateway.history import Replay, read_replay
from wsgateway.hub import Hub, Subscriber
from wsgateway.responses import error_response
from wsgateway.state import ENGINE, METRICS, REDIS, run_blocking

log = logging.getLogger("wsgateway.ws")

GREETING_TIMEOUT = 10.0  # seconds Redis and the database get to answer for the hello
HUB_REDIS_TIMEOUT = 2.0  # seconds for the hub's own commands (finding the stream's end)
SCRIPT_PATH = Path(__file__).parent / "static" / "paxyo-realtime.js"
# Event ids are zero-padded outbox ids (paxyo.events.event_id). Anything else, other scripts'
# digits included, which str.isdigit() accepts, is refused before it reaches the history.
_EVENT_ID = re.compile(r"[0-9]{1,20}", re.ASCII)



@dataclass(frozen=True)
class WsOptions:
    """Tunables of /ws and its hub (defaults for production; tests shorten them)."""

    hold_limit: int = hub_module.HOLD_LIMIT  # live events held per socket during its replay
    heartbeat: float = hub_module.HEARTBEAT  # seconds between pings
    write_buffer_limit: int = hub_module.WRITE_BUFFER_LIMIT  # unsent bytes before 4008
    backoff_max: float = hub_module.BACKOFF_MAX  # longest wait between stream read retries
    freeze_gc: bool = True  # gc.freeze() the start-up objects once the hub runs (once a process)


HUB = web.AppKey("ws_hub", Hub)
WS_SETTINGS = web.AppKey("ws_settings", Settings)
WS_OPTIONS = web.AppKey("ws_options", WsOptions)
SCRIPT = web.AppKey("ws_client_script", bytes)


def setup_websocket(app: web.Application, settings: Settings,
                    options: WsOptions | None = None) -> None:
    """Add /ws and /paxyo-realtime.js, the hub's reader and the closing of sockets on shutdown.

    Call after the app's resources (engine, Redis) are registered: the handler uses them.
    """
    app[WS_SETTINGS] = settings
    app[WS_OPTIONS] = options or WsOptions()
    app[SCRIPT] = SCRIPT_PATH.read_bytes()
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/paxyo-realtime.js", client_script)
    app.cleanup_ctx.append(_run_hub)
    app.on_shutdown.append(_close_sockets)


async def client_script(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SCRIPT], content_type="application/javascript",
                        charset="utf-8", headers={"Cache-Control": "no-cache"})


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[WS_SETTINGS]
    if not _origin_allowed(request, settings):
        return error_response(403, "origin not allowed")
    try:
        user_id = _authenticate(request, settings)
    except TokenError as exc:
        return error_response(401, str(exc))
    last_id = request.query.get("last_id") or None  # empty: none, as the JS client may send
    if last_id is not None and _EVENT_ID.fullmatch(last_id) is None:
        return error_response(400, "last_id must be an event id: 1-20 ASCII digits")
    # aiohttp checks the upgrade request; the socket is then the hub's (wsgateway.connection):
    # aiohttp's per-request objects are freed once this handler returns.
    if not web.WebSocketResponse().can_prepare(request).ok:
        return error_response(400, "expected a WebSocket upgrade")
    hub = request.app[HUB]
    subscriber = hub.subscribe(user_id)
    if take_over(request, subscriber) is None:
        hub.unsubscribe(subscriber)  # the client left before the answer
    else:
        await _greet(request, subscriber, last_id)
    return TakenOver()


def _origin_allowed(request: web.Request, settings: Settings) -> bool:
    origin = request.headers.get("Origin")
    if not settings.allowed_origins or origin is None:
        return True
    return origin.rstrip("/") in settings.allowed_origins


def _authenticate(request: web.Request, settings: Settings) -> int:
    if not settings.jwt_secret:
        raise TokenError("WebSocket tokens are not configured (PAXYO_JWT_SECRET)")
    return verify_token(settings.jwt_secret, request.query.get("token"))


async def _greet(request: web.Request, subscriber: Subscriber, last_id: str | None) -> None:
    """Send the hello and the replay, then let live events flow."""
    user_id = subscriber.user_id
    settings = request.app[WS_SETTINGS]
    try:
        replay, balance = await asyncio.wait_for(asyncio.gather(
            read_replay(request.app[REDIS], Keys(settings.redis_prefix), user_id, last_id),
            run_blocking(request.app, get_balance, request.app[ENGINE], user_id),
        ), GREETING_TIMEOUT)
    except Exception as exc:  # Redis or the database did not answer: come back later
        log.warning("ws: cannot greet user %s: %s", user_id, exc)
        subscriber.close_soon(CloseCode.TRY_AGAIN_LATER)
        return
    if not subscriber.send_text(_hello(user_id, balance, replay, settings.money_decimals)):
        return
    delivered = 0
    for _, payload in replay.events:
        if not subscriber.send_text(payload.decode()):
            return
        delivered += 1
    request.app[METRICS].events_delivered.inc(delivered)
    subscriber.go_live(replay.replayed_ids, replay.stream_end)


def _hello(user_id: int, balance: Decimal | None, replay: Replay, decimals: int) -> str:
    return orjson.dumps({
        "type": "hello",
        "user_id": user_id,
        "balance": format_money(ZERO if balance is None else balance, decimals),
        "last_id": replay.last_id,
        "recovered": replay.recovered,
    }).decode()


async def _run_hub(app: web.Application) -> AsyncIterator[None]:
    settings, options = app[WS_SETTINGS], app[WS_OPTIONS]
    # The hub's stream reader takes its connection settings (URL, TLS, auth) from this client.
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0,
                                     socket_timeout=HUB_REDIS_TIMEOUT)
    hub = Hub(client, Keys(settings.redis_prefix), metrics=app[METRICS],
              queue_size=options.hold_limit, heartbeat=options.heartbeat,
              write_buffer_limit=options.write_buffer_limit, backoff_max=options.backoff_max)
    app[HUB] = hub
    await hub.start()
    if options.freeze_gc:
        _freeze_gc()
    try:
        yield
    finally:
        await hub.stop()
        await client.aclose()


async def _close_sockets(app: web.Application) -> None:
    """On shutdown: every client is told 1001 and reconnects (to another gateway) and resumes."""
    hub = app.get(HUB)
    if hub is not None:
        count = hub.subscriber_count()
        await hub.close_all(CloseCode.GOING_AWAY)
        if count:
            log.info("ws: closed %d sockets with 1001 (shutdown)", count)


def _freeze_gc() -> None:
    """Move start-up objects out of the collector's way (perf-notes: full GCs make the tail).

    Once a process: the interpreter's own count of frozen objects says whether it was done.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


__all__ = ["HUB", "WsOptions", "setup_websocket", "websocket_handler"]
