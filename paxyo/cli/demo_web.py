"""The demo page and its endpoints, registered only in demo mode (``PAXYO_DEMO=1``).

- ``GET /``: the demo page (``static/demo.html``, ``demo.css``, ``demo.js``, ``favicon.ico``;
  nothing external).
- ``POST /demo/login`` ``{"user_id":111}``: a WebSocket token for a demo user (and the poll
  interval, which the page mentions).
- ``GET /demo/users/{user_id}/orders``: the user's balance and orders, newest first.
- ``POST /demo/orders`` ``{"user_id":111,"quantity":1000,"service":1}``: place a test order at the
  demo provider (the simulator), register it with the panel's price and debit it.
- ``POST /demo/orders/{order_id}/simulate`` ``{"action":"cancel"|"partial"|"complete"}``: tell
  the simulator to move the order; the workers notice it at the next check.
- ``POST /demo/webhook``: the demo's webhook receiver (:mod:`paxyo.cli.demo_webhooks`), where
  ``paxyo demo`` points the sender: 200 for a delivery signed with the demo's secret, 400
  otherwise. ``GET /demo/webhooks``: the last deliveries it kept, newest first.

No admin token is asked for, but only the demo users and the demo provider are reachable:
these routes never exist outside demo mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from sqlalchemy import Engine, func, select

from paxyo.accounts import get_balance
from paxyo.cli.demo import DEMO_USERS, PROVIDER, demo_charge
from paxyo.cli.demo_webhooks import RefusedDelivery, WebhookInbox
from paxyo.errors import Conflict, NotFound
from paxyo.money import ZERO, format_money
from paxyo.orders import NewOrder, get_order, order_view, place_order
from paxyo.settings import Settings
from paxyo.store.schema import orders
from providers.client import ProviderClient, ProviderUnavailable
from providers.replies import ProviderErrorReply
from wsgateway.auth import mint_token
from wsgateway.responses import BadRequest, json_response
from wsgateway.state import ENGINE, publish_event, run_blocking

log = logging.getLogger("wsgateway.demo")

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("demo.html", "text/html"), "/demo.css": ("demo.css", "text/css"),
         "/demo.js": ("demo.js", "application/javascript"),
         "/favicon.ico": ("favicon.ico", "image/x-icon")}
TOKEN_TTL = 3600
MAX_QUANTITY = 100_000
DEMO_LINK = "https://instagram.com/paxyo-demo"
SIMULATED = {  # action -> (simulator status, tenths of the quantity that remain)
    "cancel": ("Canceled", 10),
    "partial": ("Partial", 7),
    "complete": ("Completed", 0),
}

DEMO_SETTINGS = web.AppKey("demo_settings", Settings)
DEMO_HTTP = web.AppKey("demo_http", aiohttp.ClientSession)
DEMO_PLACING = web.AppKey("demo_placing", asyncio.Lock)  # one "next free id" at a time
DEMO_INBOX = web.AppKey("demo_inbox", WebhookInbox)


def setup_demo(app: web.Application, settings: Settings) -> None:
    """Add the demo page and endpoints, in demo mode (PAXYO_DEMO=1) only."""
    if not settings.demo:
        return
    app[DEMO_SETTINGS] = settings
    app[DEMO_PLACING] = asyncio.Lock()
    app[DEMO_INBOX] = WebhookInbox(settings.webhook_secret)
    for path in PAGES:
        app.router.add_get(path, static_page)
    app.router.add_post("/demo/login", login)
    app.router.add_get("/demo/users/{user_id}/orders", user_orders)
    app.router.add_post("/demo/orders", new_order)
    app.router.add_post("/demo/orders/{order_id}/simulate", simulate)
    app.router.add_post("/demo/webhook", receive_webhook)
    app.router.add_get("/demo/webhooks", webhook_deliveries)
    app.cleanup_ctx.append(_http_session)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    app[DEMO_HTTP] = aiohttp.ClientSession()
    try:
        yield
    finally:
        await app[DEMO_HTTP].close()


# -- handlers -----------------------------------------------------------------------------------

async def static_page(request: web.Request) -> web.Response:
    name, content_type = PAGES[request.path]
    return web.Response(body=(STATIC / name).read_bytes(), content_type=content_type,
                        charset=None if content_type.startswith("image/") else "utf-8",
                        headers={"Cache-Control": "no-cache"})


async def login(request: web.Request) -> web.Response:
    settings = request.app[DEMO_SETTINGS]
    user_id = _demo_user(await _body(request))
    if not settings.jwt_secret:
        raise BadRequest("PAXYO_JWT_SECRET is not set")
    return json_response({"user_id": user_id,
                          "token": mint_token(settings.jwt_secret, user_id, ttl=TOKEN_TTL),
                          "poll_interval": settings.poll_interval})


async def user_orders(request: web.Request) -> web.Response:
    settings = request.app[DEMO_SETTINGS]
    user_id = _path_int(request, "user_id")
    if user_id not in DEMO_USERS:
        raise NotFound(f"user {user_id} is not a demo user")
    balance, views = await run_blocking(request.app, _user_state, request.app[ENGINE], user_id,
                                        settings.money_decimals)
    return json_response({"user_id": user_id, "balance": balance, "orders": views})


async def new_order(request: web.Request) -> web.Response:
    state, settings = request.app, request.app[DEMO_SETTINGS]
    body = await _body(request)
    user_id = _demo_user(body)
    quantity = _int_field(body, "quantity", 1, MAX_QUANTITY)
    service = _int_field(body, "service", 1, 10**9, default=1)
    charge = demo_charge(quantity)
    balance = await run_blocking(state, get_balance, state[ENGINE], user_id)
    if balance is None or balance < charge:
        raise Conflict(f"balance {format_money(balance or ZERO, settings.money_decimals)} "
                       f"is below the charge {format_money(charge, settings.money_decimals)}")
    client = ProviderClient(settings.providers[PROVIDER], state[DEMO_HTTP], timeout=10)
    try:
        provider_order_id = await client.add(service, DEMO_LINK, quantity)
    except ProviderErrorReply as exc:
        raise BadRequest(f"the provider refused the order: {exc}") from None
    except ProviderUnavailable as exc:
        return json_response({"error": f"the provider did not answer: {exc}"}, 502)
    async with state[DEMO_PLACING]:
        result = await run_blocking(state, _place_next, state[ENGINE], settings, NewOrder(
            id=0, user_id=user_id, provider=PROVIDER, provider_order_id=provider_order_id,
            quantity=quantity, charge=charge, service=str(service), link=DEMO_LINK))
    await publish_event(state, result.event)
    return json_response(result.order, 201)


async def simulate(request: web.Request) -> web.Response:
    state, settings = request.app, request.app[DEMO_SETTINGS]
    order_id = _path_int(request, "order_id")
    body = await _body(request)
    action = body.get("action")
    if action not in SIMULATED:
        raise BadRequest(f"action must be one of {', '.join(SIMULATED)}")
    order = await run_blocking(state, get_order, state[ENGINE], order_id,
                               settings.money_decimals)
    if order["user_id"] not in DEMO_USERS or order["provider"] not in settings.providers:
        raise NotFound(f"order {order_id} is not a demo order")
    status, tenths = SIMULATED[action]
    remains = order["quantity"] * tenths // 10
    url = (f"{_simulator_base(settings.providers[order['provider']].url)}"
           f"/sim/orders/{order['provider_order_id']}")
    try:
        async with request.app[DEMO_HTTP].post(
                url, json={"status": status, "remains": remains},
                timeout=aiohttp.ClientTimeout(total=10)) as reply:
            simulator = await reply.json(content_type=None)
            ok = reply.status == 200
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return json_response({"error": f"the simulator did not answer: {exc}"}, 502)
    if not ok:
        return json_response({"error": f"the simulator refused: {simulator}"}, 502)
    return json_response({"order_id": order_id, "provider_order_id": order["provider_order_id"],
                          "status": status, "remains": remains, "simulator": simulator})


async def receive_webhook(request: web.Request) -> web.Response:
    """What a panel's server does with a delivery: verify, keep, answer 2xx (400 if forged)."""
    body = await request.read()
    try:
        kept = request.app[DEMO_INBOX].receive(
            body, request.headers.get("Paxyo-Signature", ""),
            request.headers.get("Paxyo-Event-Id", ""), now=time.time())
    except RefusedDelivery as exc:
        log.warning("demo webhook refused: %s", exc)
        raise BadRequest(str(exc)) from None
    return json_response({"received": kept["event_id"], "deliveries": kept["deliveries"]})


async def webhook_deliveries(request: web.Request) -> web.Response:
    return json_response(request.app[DEMO_INBOX].view())


# -- helpers ------------------------------------------------------------------------------------

def _user_state(engine: Engine, user_id: int, decimals: int) -> tuple[str | None, list[dict]]:
    balance = get_balance(engine, user_id)
    with engine.connect() as conn:
        rows = conn.execute(select(orders).where(orders.c.user_id == user_id)
                            .order_by(orders.c.created_at.desc(), orders.c.id.desc())).all()
    shown = None if balance is None else format_money(balance, decimals)
    return shown, [order_view(row, decimals) for row in rows]


def _place_next(engine: Engine, settings: Settings, new: NewOrder):  # type: ignore[no-untyped-def]
    """Register ``new`` under the next free order id (callers hold DEMO_PLACING)."""
    with engine.connect() as conn:
        next_id = (conn.execute(select(func.max(orders.c.id))).scalar() or 0) + 1
    return place_order(engine, NewOrder(
        id=next_id, user_id=new.user_id, provider=new.provider,
        provider_order_id=new.provider_order_id, quantity=new.quantity, charge=new.charge,
        service=new.service, link=new.link),
        decimals=settings.money_decimals, poll_interval=settings.poll_interval,
        webhook=settings.webhooks_enabled)


def _simulator_base(provider_url: str) -> str:
    url = provider_url.rstrip("/")
    return url[: -len("/api/v2")] if url.endswith("/api/v2") else url


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], field: str, low: int, high: int,
               default: int | None = None) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{field} must be an integer from {low} to {high}")
    return value


def _demo_user(body: dict[str, Any]) -> int:
    user_id = body.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id not in DEMO_USERS:
        raise BadRequest(f"user_id must be one of the demo users {', '.join(map(str, DEMO_USERS))}")
    return int(user_id)


def _path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)
