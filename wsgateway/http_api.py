"""The /v1 HTTP API the panel calls (deposits, accounts, orders) and JSON error handling.

Every route needs ``Authorization: Bearer $PAXYO_ADMIN_TOKEN`` except ``GET /v1/openapi.json``,
the OpenAPI 3.1 description of the rest (:mod:`wsgateway.openapi`). Input is validated before it
reaches the domain: bad input is always a 400 naming the field, never a 500. Money is an ASCII
decimal string (or an int) below ``paxyo.limits.MONEY_LIMIT``; a JSON number with a fraction
is refused, because money is never a float. Ids are positive integers up to ``MAX_ID`` (digits
only in paths); ``quantity`` is at most ``MAX_QUANTITY``; ``provider`` is a configured
provider; ``provider_order_id`` is one id of 1-64 ASCII letters or digits. Text fields
(``reference`` up to 150 characters, ``service`` up to 64, ``link`` up to 4096) have no
control characters (NUL included) and no lone surrogates. A body may be sent gzip- or
deflate-encoded; any other ``Content-Encoding`` is refused.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
from decimal import Decimal
from typing import Any, NoReturn

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from paxyo.accounts import deposit, get_balance
from paxyo.errors import Conflict, NotFound
from paxyo.ledger import BalanceLimitExceeded
from paxyo.limits import (
    MAX_ID,
    MAX_LINK,
    MAX_QUANTITY,
    MAX_REFERENCE,
    MAX_SERVICE,
    PROVIDER_ORDER_ID_MAX,
    is_provider_order_id,
)
from paxyo.money import MoneyError, format_money, parse_money
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.settings import Settings
from wsgateway.auth import admin_authorized
from wsgateway.openapi import OPENAPI_PATH, build_openapi
from wsgateway.responses import BadRequest, UnreadableBody, error_response, json_response
from wsgateway.state import ENGINE, SETTINGS, publish_event, run_blocking

log = logging.getLogger("wsgateway.http")

_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_KEPT_HEADERS = (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER)
# Content-Encodings aiohttp decodes (or that mean none); with any other the body we would read
# is not the body that was meant.
DATABASE_UNAVAILABLE = ("database unavailable; send the request again (a deposit or order "
                        "sent twice is applied once)")
_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    """Domain errors and HTTP errors as ``{"error": ...}``; anything else is a logged 500."""
    response = await _answer(request, handler)
    if (request.body_exists and not request.content.is_eof()
            and not isinstance(response, web.WebSocketResponse)):
        await _discard_body(request, response)
    return response


async def _answer(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except UnreadableBody as exc:
        response = error_response(400, str(exc))
        response.force_close()  # the rest of the message cannot be read: no keep-alive
        return response
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
    except (OperationalError, InterfaceError, SQLAlchemyTimeoutError) as exc:
        # The database is down, restarting, or dropped the connection: not a bug, and the
        # panel may simply send the request again (deposits and orders are idempotent).
        log.error("database unavailable in %s %s: %s", request.method, request.path,
                  str(getattr(exc, "orig", None) or exc).splitlines()[0][:200])
        response = error_response(503, DATABASE_UNAVAILABLE)
        response.headers["Retry-After"] = "1"
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error")


async def _discard_body(request: web.Request, response: web.StreamResponse) -> None:
    """Read a body the handler left unread (a 401, a GET, an unknown route) before answering.

    aiohttp would drain it after the answer, and a body that fails to decode (``gzip`` that is
    not) would then be logged as an unhandled exception with its traceback. Bounded by the
    app's ``client_max_size``.
    """
    try:
        await request.read()
    except (web.RequestPayloadError, BadHttpMessage, web.HTTPRequestEntityTooLarge):
        request.content.feed_eof()
        if not response.prepared:
            response.force_close()


@web.middleware
async def admin_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    if request.match_info.handler is get_openapi:  # the API's description is public
        return await handler(request)
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
    api.router.add_get(OPENAPI_PATH, get_openapi)
    api[_OPENAPI] = {}
    return api


_OPENAPI = web.AppKey("openapi", dict[str, bytes])


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document, built once per application from its settings."""
    cache = request.app[_OPENAPI]
    if "document" not in cache:
        cache["document"] = orjson.dumps(build_openapi(request.config_dict[SETTINGS]))
    return web.Response(body=cache["document"], content_type="application/json")


async def post_deposit(request: web.Request) -> web.Response:
    """Credit a deposit once per reference: 201 when applied, 200 when already applied."""
    state, settings = request.config_dict, request.config_dict[SETTINGS]
    user_id = _path_id(request, "user_id")
    body = await _json_object(request)
    amount = _money(body, "amount", settings.money_decimals)
    reference = _text(body, "reference", MAX_REFERENCE)
    try:
        result = await run_blocking(state, functools.partial(
            deposit, webhook=settings.webhooks_enabled), state[ENGINE], user_id, amount,
            reference, settings.money_decimals)
    except BalanceLimitExceeded as exc:
        raise BadRequest(f"amount: {exc}") from None
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
    try:
        result = await run_blocking(state, _place, state[ENGINE], new, settings)
    except BalanceLimitExceeded as exc:
        raise BadRequest(f"charge: {exc}") from None
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
                       poll_interval=settings.poll_interval, webhook=settings.webhooks_enabled)


# -- input validation -------------------------------------------------------------------------

def _new_order(body: dict[str, Any], settings: Settings) -> NewOrder:
    return NewOrder(
        id=_positive_int(body, "id"),
        user_id=_positive_int(body, "user_id"),
        provider=_provider(body, settings),
        provider_order_id=_provider_order_id(body),
        quantity=_positive_int(body, "quantity", MAX_QUANTITY),
        charge=_money(body, "charge", settings.money_decimals),
        service=_service(body),
        link=None if body.get("link") is None else _text(body, "link", MAX_LINK),
    )


class _NonFinite:
    """Stands for a NaN or Infinity literal, so that the field holding it is named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal


async def _json_object(request: web.Request) -> dict[str, Any]:
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in _ENCODINGS:
        raise BadRequest(f"body: Content-Encoding {encoding[:40]!r} is not supported "
                         "(send gzip, deflate or none)")
    try:
        raw = await request.read()
    except (web.RequestPayloadError, BadHttpMessage):
        # e.g. "Content-Encoding: gzip" on a body that is not gzip, or a truncated chunk.
        # Marking the payload finished keeps aiohttp from draining it after the answer, which
        # would raise the same error again and log it as an unhandled exception.
        request.content.feed_eof()
        raise UnreadableBody(f"body could not be read as {encoding or 'sent'}") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = _lenient_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _lenient_json(raw: bytes) -> Any:
    """What orjson refuses yet is JSON enough to name the bad field: integers beyond 64 bits,
    NaN and Infinity, lone surrogates. The fields' own checks then refuse them."""
    try:  # strict UTF-8 first: json.loads(bytes) would let surrogates through (surrogatepass)
        return json.loads(raw.decode("utf-8"), parse_constant=_NonFinite, parse_float=Decimal)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise BadRequest("body is not valid JSON") from None


def _path_id(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not _DIGITS.fullmatch(raw) or not 0 < int(raw) <= MAX_ID:
        raise BadRequest(f"{name} must be a positive integer, not {raw[:40]!r}")
    return int(raw)


def _required(body: dict[str, Any], field: str) -> Any:
    if body.get(field) is None:
        raise BadRequest(f"{field} is required")
    return body[field]


def _positive_int(body: dict[str, Any], field: str, maximum: int = MAX_ID) -> int:
    value = _required(body, field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise BadRequest(f"{field} must be an integer from 1 to {maximum}")
    return value


def _text(body: dict[str, Any], field: str, max_length: int) -> str:
    """A non-blank string of at most ``max_length`` characters that every store can hold."""
    value = _required(body, field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    if len(value) > max_length:
        raise BadRequest(f"{field} must be at most {max_length} characters")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise BadRequest(f"{field} must not contain control characters (NUL, newline...) "
                         "or lone surrogates")
    return value


def _service(body: dict[str, Any]) -> str | None:
    """An optional id the panel may send as a number or a string; stored as a string."""
    value = body.get("service")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_ID:
            raise BadRequest(f"service must be an integer from 1 to {MAX_ID} or a string")
        return str(value)
    if not isinstance(value, str):
        raise BadRequest("service must be an integer or a string")
    return _text(body, "service", MAX_SERVICE)


def _provider(body: dict[str, Any], settings: Settings) -> str:
    value = _required(body, "provider")
    provider = value.lower() if isinstance(value, str) and value.isascii() else None
    if provider not in settings.providers:
        configured = ", ".join(sorted(settings.providers)) or "none"
        shown = value[:40] if isinstance(value, str) else value
        raise BadRequest(f"provider {shown!r} is not configured (configured: {configured})")
    return provider


def _provider_order_id(body: dict[str, Any]) -> str:
    """One id at the provider: a positive integer or 1-64 ASCII letters and digits."""
    value = _required(body, "provider_order_id")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        value = str(value)
    if not isinstance(value, str) or not is_provider_order_id(value):
        raise BadRequest(f"provider_order_id must be one id: 1-{PROVIDER_ORDER_ID_MAX} ASCII "
                         "letters or digits (no comma, space or other character)")
    return value


def _money(body: dict[str, Any], field: str, decimals: int) -> Decimal:
    value = _required(body, field)
    if isinstance(value, float | Decimal | _NonFinite):
        raise BadRequest(f"{field} must be a decimal string such as \"25.00\", "
                         "not a JSON number with a fraction (money is never a float)")
    try:
        return parse_money(value, decimals)
    except MoneyError as exc:
        _money_error(field, str(exc))


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
