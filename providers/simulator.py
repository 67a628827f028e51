"""Provider simulator: an HTTP server speaking SMM panel API v2 like a Perfect Panel host.

``/api/v2`` takes a form POST (canonical), a GET query string or a JSON body, answers every
refusal with HTTP 200 ``{"error": ...}`` and serves numbers as strings. Documented choices
where real panels are unspecified:

- a status or cancel list of more than 100 ids is refused with ``{"error":"Incorrect request"}``;
- add ids count up from 1000; control-created numeric ids push the counter past themselves.

Control endpoints (JSON, no key), for tests, the demo and benchmarks:

- ``POST /sim/orders/{id}`` ``{"status":..., "remains":...}`` or ``{"entry": <any>}``, optional
  ``"quantity"``; creates the order if it does not exist. ``GET /sim/orders/{id}`` shows it.
- ``POST /sim/orders/{id}`` ``{"reply": "omit" | "extra" | "repeat" | null}`` (alone or with the
  keys above): a fault of every multi-status reply (``orders=``) that asks for this id, until set
  to null. "omit" leaves the id out; "extra" adds two ids not asked for (one no order has, one
  known order), each with a Canceled entry; "repeat" writes the id's key twice in the body, as
  string-built PHP JSON does. The order keeps moving (or stays frozen) as before.
- ``POST /sim/orders/{id}`` ``{"schedule": {"pending": 30, "running": 120, "ends": "Partial",
  "remains": 300}}``: from now, Pending for 30 s, then In progress for 120 s while the remains
  fall in ten equal steps, then Partial with 300 remains (``paxyo demo``'s slow orders). It
  replaces a frozen status or entry; setting one later freezes the order again.
- ``POST /sim/orders`` ``{"orders": [{"id": ..., "status": ..., "remains": ...}, ...]}``: the
  same for many orders in one request (benchmarks seed 100,000 orders this way).
- ``GET|POST /sim/faults``: latency_ms, error_rate, html_rate, timeout_rate, rate_limit_per_min.
- ``GET /sim/stats`` (``max_in_flight``: the most /api/v2 requests answered at once),
  ``POST /sim/stats/reset``; ``POST /sim/balance`` ``{"balance":"12.5"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from providers.simulator_state import (
    MAX_IDS_PER_REQUEST,
    SERVICES,
    SimulatorState,
    split_ids,
)

log = logging.getLogger("paxyo.providers")

STALL_SECONDS = 60.0  # a "timeout" fault: far longer than any client timeout

STATE = web.AppKey("simulator_state", SimulatorState)
STOPPING = web.AppKey("simulator_stopping", asyncio.Event)

CLOUDFLARE_PAGE = """<!DOCTYPE html>
<html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head>
<body><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">Checking if the site connection is secure</h1>
<p>Enable JavaScript and cookies to continue</p></div></div>
<div class="footer" role="contentinfo">Performance &amp; security by Cloudflare</div></body></html>
"""
SERVER_ERROR_PAGES = (
    (500, "text/plain", "Internal Server Error"),
    (502, "text/html", "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
     "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
     "</html>\r\n"),
)
GATEWAY_TIMEOUT_PAGE = "<html><body><h1>504 Gateway Time-out</h1></body></html>"


def create_simulator_app(
    key: str,
    seed: int = 0,
    *,
    auto_advance: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The simulator as an aiohttp application; ``auto_advance=False`` keeps orders Pending."""
    app = web.Application()
    app[STATE] = SimulatorState(key, seed, auto_advance=auto_advance, clock=clock)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_wake_stalled_requests)
    app.router.add_route("GET", "/api/v2", handle_api)
    app.router.add_route("POST", "/api/v2", handle_api)
    app.router.add_post("/sim/orders", set_orders)
    app.router.add_get("/sim/orders/{order_id}", get_order)
    app.router.add_post("/sim/orders/{order_id}", set_order)
    app.router.add_get("/sim/faults", get_faults)
    app.router.add_post("/sim/faults", set_faults)
    app.router.add_get("/sim/stats", get_stats)
    app.router.add_post("/sim/stats/reset", reset_stats)
    app.router.add_post("/sim/balance", set_balance)
    return app


def run_simulator(host: str, port: int, key: str, seed: int) -> None:
    """Serve the simulator until interrupted (``paxyo simulator``)."""
    log.info("provider simulator on http://%s:%d/api/v2 (seed %d)", host, port, seed)
    web.run_app(
        create_simulator_app(key, seed), host=host, port=port,
        access_log=None, handler_cancellation=True,
    )


async def _wake_stalled_requests(app: web.Application) -> None:
    app[STOPPING].set()


# -- /api/v2 ------------------------------------------------------------------------------


async def handle_api(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _answer_api(request, state)
    finally:
        state.in_flight -= 1


async def _answer_api(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    params = await _read_params(request)
    action = params.get("action", "")
    state.count_request(action, params)
    faulted = await _inject_fault(request, state)
    if faulted is not None:
        return faulted
    if params.get("key") != state.key:
        state.counters["invalid_key"] += 1
        return _json({"error": "Invalid API key"})
    handler = ACTIONS.get(action)
    if handler is None:
        return _json({"error": "Incorrect request"})
    reply = handler(state, params)
    if isinstance(reply, RawObject):
        return web.Response(body=reply.body(), content_type="application/json")
    return _json(reply)


async def _read_params(request: web.Request) -> dict[str, str]:
    """Query string, overlaid with a form or JSON body (like PHP's $_REQUEST)."""
    params = dict(request.query)
    if request.method != "POST" or not request.body_exists:
        return params
    if request.content_type == "application/json":
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(await request.read())
            if isinstance(body, dict):
                params.update({str(k): _param_text(v) for k, v in body.items()})
        return params
    form = await request.post()
    params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _param_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_param_text(item) for item in value)
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def _inject_fault(request: web.Request, state: SimulatorState) -> web.Response | None:
    retry_after = state.rate_limited_for()
    if retry_after is not None:
        state.count_fault("rate_limited")
        return web.Response(
            status=429, text="Too Many Requests", content_type="text/plain",
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        )
    if state.faults.latency_ms:
        await _sleep(request, state.faults.latency_ms / 1000)
    fault = state.draw_fault()
    if fault is not None:
        state.count_fault(fault)
    if fault == "error":
        status, content_type, text = state.choice(SERVER_ERROR_PAGES)
        return web.Response(status=status, text=text, content_type=content_type)
    if fault == "html":
        return web.Response(text=CLOUDFLARE_PAGE, content_type="text/html")
    if fault == "timeout":
        await _sleep(request, STALL_SECONDS)
        return web.Response(status=504, text=GATEWAY_TIMEOUT_PAGE, content_type="text/html")
    return None


async def _sleep(request: web.Request, seconds: float) -> None:
    """Sleep, but wake at once when the server shuts down."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(request.app[STOPPING].wait(), seconds)


def _services(state: SimulatorState, params: dict[str, str]) -> Any:
    return [service.as_reply() for service in SERVICES.values()]


def _add(state: SimulatorState, params: dict[str, str]) -> Any:
    return state.add_order(
        params.get("service", ""), params.get("link", ""), params.get("quantity", "")
    )


def _status(state: SimulatorState, params: dict[str, str]) -> Any:
    if "orders" not in params:
        return state.status_entry(params.get("order", "").strip())
    ids = split_ids(params["orders"])
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        return {"error": "Incorrect request"}
    return RawObject(state.status_pairs(ids))


class RawObject:
    """A JSON object written pair by pair, so that a key may appear twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def body(self) -> bytes:
        members = b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in self.pairs)
        return b"{" + members + b"}"


def _cancel(state: SimulatorState, params: dict[str, str]) -> Any:
    ids = split_ids(params.get("orders") or params.get("order", ""))
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        return {"error": "Incorrect request"}
    return [{"order": _id_value(i), "cancel": state.cancel(i)} for i in ids]


def _refill(state: SimulatorState, params: dict[str, str]) -> Any:
    if "orders" not in params:
        refill = state.refill(params.get("order", "").strip())
        return refill if isinstance(refill, dict) else {"refill": str(refill)}
    ids = split_ids(params["orders"])
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        return {"error": "Incorrect request"}
    return [{"order": _id_value(i), "refill": state.refill(i)} for i in ids]


def _refill_status(state: SimulatorState, params: dict[str, str]) -> Any:
    if "refills" not in params:
        status = state.refill_status(params.get("refill", ""))
        return status if isinstance(status, dict) else {"status": status}
    ids = split_ids(params["refills"])
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        return {"error": "Incorrect request"}
    return [{"refill": _id_value(i), "status": state.refill_status(i)} for i in ids]


def _balance(state: SimulatorState, params: dict[str, str]) -> Any:
    return {"balance": str(state.balance), "currency": "USD"}


ACTIONS: dict[str, Callable[[SimulatorState, dict[str, str]], Any]] = {
    "services": _services,
    "add": _add,
    "status": _status,
    "cancel": _cancel,
    "refill": _refill,
    "refill_status": _refill_status,
    "balance": _balance,
}


def _id_value(order_id: str) -> int | str:
    """Ids inside arrays are ints in the Perfect Panel examples."""
    return int(order_id) if order_id.isdigit() else order_id


# -- control endpoints --------------------------------------------------------------------


async def get_order(request: web.Request) -> web.Response:
    view = request.app[STATE].describe(request.match_info["order_id"])
    if view is None:
        return _json({"error": "Incorrect order ID"}, status=404)
    return _json(view)


async def set_order(request: web.Request) -> web.Response:
    state = request.app[STATE]
    order_id = request.match_info["order_id"]
    changes = await _read_control_body(request, allow_empty=True)
    try:
        state.set_order(order_id, changes)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None
    return _json(state.describe(order_id))


async def set_orders(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_control_body(request)
    items = body.get("orders")
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and "id" in i for i in items):
        raise _bad_request("orders must be a list of objects with an id")
    try:
        for item in items:
            changes = {k: v for k, v in item.items() if k != "id"}
            state.set_order(str(item["id"]), changes)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None
    return _json({"orders": len(items)})


async def get_faults(request: web.Request) -> web.Response:
    return _json(request.app[STATE].faults.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    faults = request.app[STATE].faults
    changes = await _read_control_body(request)
    try:
        faults.update(changes)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None
    return _json(faults.as_dict())


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats())


async def reset_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset_stats()
    return _json(state.stats())


async def set_balance(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_control_body(request)
    try:
        balance = Decimal(str(body.get("balance")))
    except InvalidOperation:
        raise _bad_request("balance must be a number") from None
    if not balance.is_finite():
        raise _bad_request("balance must be a number")
    state.balance = balance
    return _json({"balance": str(balance), "currency": "USD"})


async def _read_control_body(request: web.Request, *, allow_empty: bool = False) -> dict:
    raw = await request.read()
    if allow_empty and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad_request("body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        body=orjson.dumps({"error": message}), content_type="application/json"
    )


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
