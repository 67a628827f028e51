"""JSON answers of the gateway's HTTP routes: bodies, and ``{"error": ...}`` for errors."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class BadRequest(Exception):
    """400: the request is malformed; ``str()`` names the field and what is wrong."""


class UnreadableBody(BadRequest):
    """400 for a body that could not be decoded; the connection is closed after the answer."""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)
