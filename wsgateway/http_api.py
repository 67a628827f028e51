"""The /v1 HTTP API the panel calls (deposits, accounts, orders) and JSON error handling.

Every route needs ``Authorization: Bearer $PAXYO_ADMIN_TOKEN``. Input is validated before it
reaches the domain: bad input is always a 400 naming the field, never a 500. Money is a decimal
string (or an int); a JSON number with a fraction is refused, because money is never a float.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import Any, NoReturn

import orjson
import redis
from aiohttp import hdrs, web

from paxyo.accounts import deposit, get_balance
from paxyo.errors import Conflict, NotFound
from paxyo.events import PendingEvent
from paxyo.money import MoneyError, format_money, parse_money
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.settings import Settings
from wsgateway.app import ENGINE, RELAY, SETTINGS, State, run_blocking
from wsgateway.auth import admin_authorized

log = logging.getLogger("wsgateway.http")

MAX_ID = 2**63 - 1  # BIGINT
MAX_MONEY = Decimal(10) ** 15  # the store keeps 16 integer digits
MAX_REFERENCE = 150
MAX_NAME = 64  # provider, provider_order_id, service
MAX_LINK = 4096
_DIGITS = re.compile(r"[0-9]{1,19}")
_KEPT_HEADERS = (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER)


class BadRequest(Exception):
    """400: the request is malformed; ``str()`` names the field and what is wrong."""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    """Domain errors and HTTP errors as ``{"error": ...}``; anything else is a logged 500."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, str(exc))
    except NotFound as exc:
        return error_response(404, str(exc))
    except Conflict as exc:
        return error_response(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(exc)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error")


@web.middleware
async def admin_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    settings = request.config_dict[SETTINGS]
    if not admin_authorized(request.headers.get(hdrs.AUTHORIZATION), settings.admin_token,
                            demo=settings.demo):
        response = error_response(401, "missing or invalid admin bearer token")
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return response
    return await handler(request)


def create_api() -> web.Application:
    """The /v1 sub-application."""
    api = web.Application(middlewares=[admin_middleware])
    api.router.add_post("/accounts/{user_id}/deposits", post_deposit)
    api.router.add_get("/accounts/{user_id}", get_account)
    api.router.add_post("/orders", post_order)
    api.router.add_get("/orders/{order_id}", get_order_view)
    return api


async def post_deposit(request: web.Request) -> web.Response:
    """Credit a deposit once per reference: 201 when applied, 200 when already applied."""
    state, settings = request.config_dict, request.config_dict[SETTINGS]
    user_id = _path_id(request, "user_id")
    body = await _json_object(request)
    amount = _money(body, "amount", settings.money_decimals)
    reference = _string(body, "reference", MAX_REFERENCE)
    result = await run_blocking(state, deposit, state[ENGINE], user_id, amount, reference,
                                settings.money_decimals)
    await publish_event(state, result.event)
    return json_response({"user_id": user_id,
                          "balance": format_money(result.balance, settings.money_decimals)},
                         201 if result.created else 200)


async def get_account(request: web.Request) -> web.Response:
    state, settings = request.config_dict, request.config_dict[SETTINGS]
    user_id = _path_id(request, "user_id")
    balance = await run_blocking(state, get_balance, state[ENGINE], user_id)
    if balance is None:
        raise NotFound(f"account {user_id} not found")
    return json_response({"user_id": user_id,
                          "balance": format_money(balance, settings.money_decimals),
                          "currency": settings.currency})


async def post_order(request: web.Request) -> web.Response:
    """Register an order and debit its charge: 201 when placed, 200 for an identical repeat."""
    state, settings = request.config_dict, request.config_dict[SETTINGS]
    new = _new_order(await _json_object(request), settings)
    result = await run_blocking(state, _place, state[ENGINE], new, settings)
    await publish_event(state, result.event)
    return json_response(result.order, 201 if result.created else 200)


async def get_order_view(request: web.Request) -> web.Response:
    state, settings = request.config_dict, request.config_dict[SETTINGS]
    order_id = _path_id(request, "order_id")
    order = await run_blocking(state, get_order, state[ENGINE], order_id,
                               settings.money_decimals)
    return json_response(order)


def _place(engine, new: NewOrder, settings: Settings):  # type: ignore[no-untyped-def]
    return place_order(engine, new, decimals=settings.money_decimals,
                       poll_interval=settings.poll_interval)


async def publish_event(state: State, event: PendingEvent | None) -> None:
    """Publish a just-committed event; if Redis is down the sweeper publishes it later."""
    if event is None:
        return
    try:
        await run_blocking(state, state[RELAY].publish_ids, [event.outbox_id])
    except redis.RedisError as exc:
        log.warning("event %s not published now (Redis: %s); the sweeper will", event.id, exc)
    except Exception:
        log.exception("event %s not published now; the sweeper will", event.id)


# -- input validation -------------------------------------------------------------------------

def _new_order(body: dict[str, Any], settings: Settings) -> NewOrder:
    return NewOrder(
        id=_positive_int(body, "id"),
        user_id=_positive_int(body, "user_id"),
        provider=_provider(body, settings),
        provider_order_id=_provider_order_id(body),
        quantity=_positive_int(body, "quantity"),
        charge=_money(body, "charge", settings.money_decimals),
        service=_optional_name(body, "service"),
        link=_optional_string(body, "link", MAX_LINK),
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _path_id(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not _DIGITS.fullmatch(raw) or not 0 < int(raw) <= MAX_ID:
        raise BadRequest(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


def _required(body: dict[str, Any], field: str) -> Any:
    if body.get(field) is None:
        raise BadRequest(f"{field} is required")
    return body[field]


def _positive_int(body: dict[str, Any], field: str) -> int:
    value = _required(body, field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise BadRequest(f"{field} must be a positive integer")
    return value


def _string(body: dict[str, Any], field: str, max_length: int) -> str:
    value = _required(body, field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    if len(value) > max_length:
        raise BadRequest(f"{field} must be at most {max_length} characters")
    return value


def _optional_string(body: dict[str, Any], field: str, max_length: int) -> str | None:
    return None if body.get(field) is None else _string(body, field, max_length)


def _optional_name(body: dict[str, Any], field: str) -> str | None:
    """An optional id the panel may send as a number or a string; stored as a string."""
    value = body.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{field} must be an integer or a string")
    return _optional_string(body, field, MAX_NAME)


def _provider(body: dict[str, Any], settings: Settings) -> str:
    provider = _string(body, "provider", MAX_NAME).strip().lower()
    if settings.providers and provider not in settings.providers:
        raise BadRequest(f"unknown provider {provider!r}")
    return provider


def _provider_order_id(body: dict[str, Any]) -> str:
    value = _required(body, "provider_order_id")
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise BadRequest("provider_order_id must be a positive integer or a string")
        return str(value)
    if not isinstance(value, str):
        raise BadRequest("provider_order_id must be an integer or a string")
    return _string(body, "provider_order_id", MAX_NAME).strip()


def _money(body: dict[str, Any], field: str, decimals: int) -> Decimal:
    value = _required(body, field)
    if isinstance(value, float):
        raise BadRequest(f"{field} must be a decimal string such as \"25.00\", "
                         "not a JSON number with a fraction (money is never a float)")
    try:
        amount = parse_money(value, decimals)
    except MoneyError as exc:
        _money_error(field, str(exc))
    except ArithmeticError:  # e.g. "1e40": too many digits to quantize
        _money_error(field, f"{field} is too large")
    if amount >= MAX_MONEY:
        _money_error(field, f"{field} is too large")
    return amount


def _money_error(field: str, message: str) -> NoReturn:
    raise BadRequest(message if message.startswith(field) else f"{field}: {message}")


def _http_error(exc: web.HTTPException) -> web.Response:
    text = exc.text or ""
    default = f"{exc.status}: {exc.reason}"
    message = exc.reason.lower() if text.strip() in ("", default) else text
    response = error_response(exc.status, message)
    for name in _KEPT_HEADERS:
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response
