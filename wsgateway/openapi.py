"""The OpenAPI 3.1 description of /v1, built from the same limits the validation uses.

Built per application from its settings (money decimals, configured providers), so the
document says what this gateway accepts and cannot drift from ``paxyo.limits`` or the bounds
in :mod:`wsgateway.http_api`. Served at ``GET /v1/openapi.json`` without auth.
"""

from __future__ import annotations

from typing import Any

from paxyo.limits import (
    MAX_ID,
    MAX_LINK,
    MAX_QUANTITY,
    MAX_REFERENCE,
    MAX_SERVICE,
    MONEY_LIMIT,
    PROVIDER_ORDER_ID_MAX,
)
from paxyo.settings import Settings

OPENAPI_PATH = "/openapi.json"  # inside the /v1 sub-application

# Cc (control, NUL included) is U+0000-U+001F and U+007F-U+009F; at least one non-space.
_TEXT_PATTERN = r"^(?=[\s\S]*\S)[^\x00-\x1f\x7f-\x9f]*$"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def money_pattern(decimals: int) -> str:
    """A positive amount below MONEY_LIMIT as :func:`paxyo.money.parse_money` reads it.

    1-40 ASCII digits, optionally a dot and 1-40 digits, of which only the first ``decimals``
    may be non-zero (``"1.500"`` is 1.50 with 2 decimals); not zero.
    """
    whole_digits = len(str(int(MONEY_LIMIT))) - 1  # below 10^10: at most 10 significant
    fraction = (rf"(?:\.(?=[0-9]{{1,40}}$)[0-9]{{0,{decimals}}}0*)?" if decimals
                else r"(?:\.(?=[0-9]{1,40}$)0+)?")
    return (r"^(?=[0-9]{1,40}(?:\.|$))(?=[0-9.]*[1-9])"
            rf"0*[0-9]{{1,{whole_digits}}}{fraction}$")


def _provider_pattern(names: list[str]) -> str:
    """The configured provider names, ASCII case-insensitively (``GodOfPanel`` too).

    Names are ``[a-z0-9_]`` (``PAXYO_PROVIDER_<NAME>_URL``): nothing to escape.
    """
    def insensitive(name: str) -> str:
        return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in name)
    return "^(?:" + "|".join(insensitive(name) for name in names) + ")$" if names else "^(?!)$"


def _text(max_length: int, description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "pattern": _TEXT_PATTERN,
            "description": description + " Not blank; no control characters (NUL, newline...) "
                           "and no lone surrogates."}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the /v1 API as this gateway runs it."""
    decimals = settings.money_decimals
    limit = int(MONEY_LIMIT)
    providers = sorted(settings.providers)
    money_in = {
        "description": f"Money: an ASCII decimal string with at most {decimals} decimals "
                       "(extra trailing zeros allowed), or a JSON integer; above 0 and below "
                       f"{limit}. No sign, exponent, '_', space or other scripts' digits; a "
                       "JSON number with a fraction is refused (money is never a float).",
        "anyOf": [{"type": "string", "pattern": money_pattern(decimals)},
                  {"type": "integer", "minimum": 1, "maximum": limit - 1}],
    }
    money_out = {"type": "string",
                 "pattern": r"^[0-9]+" + (rf"\.[0-9]{{{decimals}}}" if decimals else "") + "$",
                 "description": f"Money as a decimal string with exactly {decimals} decimals."}
    identifier = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    id_param = {"type": "integer", "minimum": 1, "maximum": MAX_ID,
                "description": f"ASCII digits, 1 to {MAX_ID}."}

    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string",
                                           "description": "What is wrong, naming the field."}}},
        "Money": money_out,
        "Deposit": {
            "type": "object", "required": ["amount", "reference"],
            "properties": {
                "amount": money_in,
                "reference": _text(MAX_REFERENCE, "The payment's reference: a deposit is "
                                   "applied once per (user, reference)."),
            },
        },
        "DepositResult": {
            "type": "object", "required": ["user_id", "balance"],
            "properties": {"user_id": identifier, "balance": _ref("Money")},
        },
        "Account": {
            "type": "object", "required": ["user_id", "balance", "currency"],
            "properties": {"user_id": identifier, "balance": _ref("Money"),
                           "currency": {"type": "string"}},
        },
        "NewOrder": {
            "type": "object",
            "description": "Integers are JSON integers written without a fraction or exponent "
                           "(5.0 and 5e0 are refused although JSON Schema calls them integers).",
            "required": ["id", "user_id", "provider", "provider_order_id", "quantity", "charge"],
            "properties": {
                "id": {**identifier, "description": "The panel's order id."},
                "user_id": identifier,
                "provider": {"type": "string", "pattern": _provider_pattern(providers),
                             "description": "A configured provider, ASCII case-insensitively"
                                            f" (configured: {', '.join(providers) or 'none'})."},
                "provider_order_id": {
                    "description": f"One id at the provider: 1-{PROVIDER_ORDER_ID_MAX} ASCII "
                                   "letters or digits, or a JSON integer from 1 to 2^64-1.",
                    "anyOf": [{"type": "string",
                               "pattern": rf"^[A-Za-z0-9]{{1,{PROVIDER_ORDER_ID_MAX}}}$"},
                              # orjson reads a larger integer as a float, refused
                              {"type": "integer", "minimum": 1, "maximum": 2**64 - 1}],
                },
                "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
                "charge": {**money_in, "description": "Debited from the user's balance. "
                                                      + money_in["description"]},
                "service": {
                    "description": "Optional; stored as a string.",
                    "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ID},
                              _text(MAX_SERVICE, "The panel's service id."),
                              {"type": "null"}],
                },
                "link": {"anyOf": [_text(MAX_LINK, "Optional."), {"type": "null"}]},
            },
        },
        "Order": {
            "type": "object",
            "required": ["id", "user_id", "provider", "provider_order_id", "service", "link",
                         "status", "remains", "quantity", "charge", "refunded",
                         "provider_status", "created_at", "updated_at", "checked_at"],
            "properties": {
                "id": identifier, "user_id": identifier,
                "provider": {"type": "string"},
                "provider_order_id": {"type": "string"},
                "service": {"type": ["string", "null"]},
                "link": {"type": ["string", "null"]},
                "status": {"type": "string", "description": "Pending, Processing, In progress, "
                           "Awaiting, Active, Completed, Partial, Canceled, or a provider's "
                           "unknown word (kept, never refunded)."},
                "remains": {"type": ["integer", "null"]},
                "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
                "charge": _ref("Money"),
                "refunded": _ref("Money"),
                "provider_status": {"type": ["string", "null"]},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "checked_at": nullable_time,
            },
        },
    }
    bad = _error("Bad input: a path id, the body, or a field (named in the message).")
    unauthorized = _error("Missing or invalid admin bearer token.")
    too_large = _error("The body is larger than the server accepts.")
    unavailable = _error("The database did not answer (Retry-After: 1). Sending the request "
                         "again is safe: a deposit or order sent twice is applied once.")

    def body(schema: str) -> dict[str, Any]:
        return {"required": True, "content": {_JSON: {"schema": _ref(schema)}},
                "description": "A JSON object in UTF-8, optionally gzip- or deflate-encoded "
                               "(Content-Encoding); unknown fields are ignored."}

    def path_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": id_param}

    return {
        "openapi": "3.1.0",
        "info": {"title": "Paxyo Realtime API", "version": "1",
                 "description": "Deposits, balances and orders for SMM panels. Every route "
                                "needs `Authorization: Bearer $PAXYO_ADMIN_TOKEN`, except this "
                                "document. Errors are `{\"error\": \"...\"}` "
                                "(components/schemas/Error), also 405 (with `Allow`) for a "
                                "method a path does not have."},
        "servers": [{"url": "/v1"}],
        "security": [{"adminToken": []}],
        "paths": {
            "/accounts/{user_id}/deposits": {
                "parameters": [path_param("user_id")],
                "post": {
                    "operationId": "deposit",
                    "summary": "Credit a deposit once per reference.",
                    "requestBody": body("Deposit"),
                    "responses": {
                        "201": _ok("Applied; the new balance.", "DepositResult"),
                        "200": _ok("Already applied with this reference; nothing changed.",
                                   "DepositResult"),
                        "400": bad, "401": unauthorized, "503": unavailable,
                        "409": _error("The reference was already used with another amount."),
                        "413": too_large,
                    },
                },
            },
            "/accounts/{user_id}": {
                "parameters": [path_param("user_id")],
                "get": {
                    "operationId": "getAccount",
                    "summary": "The user's balance.",
                    "responses": {
                        "200": _ok("The account.", "Account"),
                        "400": bad, "401": unauthorized, "503": unavailable,
                        "404": _error("No such account."),
                    },
                },
            },
            "/orders": {
                "post": {
                    "operationId": "placeOrder",
                    "summary": "Register an order and debit its charge.",
                    "requestBody": body("NewOrder"),
                    "responses": {
                        "201": _ok("Placed; the charge was debited.", "Order"),
                        "200": _ok("The identical order again; nothing changed.", "Order"),
                        "400": bad, "401": unauthorized, "503": unavailable,
                        "409": _error("Insufficient balance, or the id exists with a different "
                                      "body."),
                        "413": too_large,
                    },
                },
            },
            "/orders/{order_id}": {
                "parameters": [path_param("order_id")],
                "get": {
                    "operationId": "getOrder",
                    "summary": "An order, its status and refund.",
                    "responses": {
                        "200": _ok("The order.", "Order"),
                        "400": bad, "401": unauthorized, "503": unavailable,
                        "404": _error("No such order."),
                    },
                },
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "getOpenapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI 3.1 document.",
                                          "content": {_JSON: {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "PAXYO_ADMIN_TOKEN"}},
        },
    }
