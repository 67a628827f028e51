"""Parsing of SMM panel API v2 reply bodies: pure functions, no I/O.

Panels disagree on types (numbers as strings or numbers, ids as int or string) and on error
shapes (a top-level ``{"error": ...}``, a per-id ``{"error": ...}``, a plain string per id), and
sometimes answer with an HTML page. Every parser here accepts the variants listed in
smm-api-v2.md and sorts the rest into two exceptions:

- :class:`ReplyError`: the whole body is unusable (not JSON, HTML, empty, wrong shape). Treat
  it as transient; never read it as a status.
- :class:`ProviderErrorReply`: a well-formed top-level ``{"error": "..."}``. The provider
  refused the request (bad key, bad service, unknown order); retrying will not help.

Per-order problems inside a multi-status reply are values, not exceptions: :class:`EntryError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from paxyo.limits import MAX_REMAINS
from paxyo.status_entries import EntryError, StatusEntry

__all__ = ["EntryError", "ProviderErrorReply", "ReplyError", "StatusEntry", "decode",
           "parse_add", "parse_balance", "parse_cancel", "parse_entry", "parse_multi_status",
           "parse_remains", "parse_services", "parse_single_status"]

SNIPPET_CHARS = 200
_REMAINS = re.compile(r"-?[0-9]{1,20}(?:\.0*)?", re.ASCII)


class ReplyError(Exception):
    """The whole body is unusable: not JSON, an HTML page, empty, or of the wrong shape."""

    def __init__(self, reason: str, body: bytes | str = b"") -> None:
        self.reason = reason
        self.snippet = body_snippet(body)
        super().__init__(f"{reason}: {self.snippet!r}")


class ProviderErrorReply(Exception):
    """The provider answered with a top-level ``{"error": "..."}``."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def body_snippet(body: bytes | str) -> str:
    """The first 200 characters of a body, for logs and error messages."""
    if isinstance(body, bytes):
        body = body[: SNIPPET_CHARS * 4].decode("utf-8", "replace")
    return body[:SNIPPET_CHARS]


def decode(body: bytes | str) -> Any:
    """Decode a JSON body; raise :class:`ReplyError` when it is empty or not JSON."""
    if not body or not body.strip():
        raise ReplyError("empty body", body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # what orjson refuses but PHP's json_encode writes: a number past a double (1e400)
        return json.loads(body)
    except ValueError:
        kind = "HTML page" if _looks_like_html(body) else "not JSON"
        raise ReplyError(kind, body) from None


def parse_multi_status(
    body: bytes | str, requested: Sequence[str]
) -> dict[str, StatusEntry | EntryError]:
    """Entries of an ``action=status&orders=...`` reply, keyed by the requested ids.

    Ids absent from the reply are absent from the result (the caller reads that as "no
    change"); keys that were not requested are ignored. A panel that answers a one-id request
    with the single-status shape is accepted too, and so is a list of entries carrying "order".
    """
    data = decode(body)
    wanted = [str(order_id) for order_id in requested]
    if isinstance(data, list):
        data = _index_by_order(data)
    if not isinstance(data, dict):
        raise ReplyError(f"status reply is a {type(data).__name__}, not an object", body)
    if len(wanted) == 1 and wanted[0] not in data:
        single = _single_shape(data)
        if single is not None:
            return {wanted[0]: single}
    _raise_top_level_error(data, wanted)
    found = _match_keys(data, wanted)
    return {order_id: parse_entry(data[key]) for order_id, key in found.items()}


def _single_shape(data: Mapping[str, Any]) -> StatusEntry | EntryError | None:
    """A one-id request answered in the single-status shape, including its order-id error."""
    if "status" in data:
        return parse_entry(data)
    error = data.get("error")
    if isinstance(error, str) and "order id" in error.lower():
        return EntryError(error.strip())
    return None


def parse_single_status(body: bytes | str) -> StatusEntry:
    """The entry of an ``action=status&order=ID`` reply."""
    data = decode(body)
    if not isinstance(data, dict):
        raise ReplyError(f"status reply is a {type(data).__name__}, not an object", body)
    _raise_top_level_error(data)
    entry = parse_entry(data)
    if isinstance(entry, EntryError):
        raise ReplyError(f"unusable status reply ({entry.reason})", body)
    return entry


def parse_entry(value: Any) -> StatusEntry | EntryError:
    """One per-order status entry, or why it cannot be used."""
    if not isinstance(value, dict):
        if isinstance(value, str):
            return EntryError(value.strip() or "empty error string")
        return EntryError(f"entry is a {type(value).__name__}", "bad_entry")
    if "error" in value:
        return EntryError(_text(value["error"]) or "empty error")
    status = value.get("status")
    if not isinstance(status, str) or not (status := status.strip()):
        return EntryError("entry without a status string", "bad_entry")
    return StatusEntry(status, parse_remains(value.get("remains")),
                       _optional_text(value.get("charge")),
                       _optional_text(value.get("currency")))


def parse_remains(value: Any) -> int | None:
    """An integer remains from "157", 157, "157.0", 157.0 or "-5"; None for anything else.

    Only ASCII digits are read, and only within ±MAX_REMAINS: "1e30", a full-width digit or
    10**30 is no number this system can use or store. A leading "+" is refused: SmartPanel
    writes over-delivery as "+N", so its sign is ambiguous.
    """
    if type(value) is str:  # the common case: a few ASCII digits, below MAX_REMAINS
        text = value.strip()
        if len(text) < 16 and text.isdigit() and text.isascii():
            return int(text)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():  # also NaN and infinities
            return None
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if _REMAINS.fullmatch(text) is None:
            return None
        value = int(text.partition(".")[0])
    if not isinstance(value, int):
        return None
    return value if -MAX_REMAINS <= value <= MAX_REMAINS else None


def parse_add(body: bytes | str) -> str:
    """The new order's id, as a string, from ``{"order": 23501}`` or its variants."""
    data = decode(body)
    if not isinstance(data, dict):
        raise ReplyError(f"add reply is a {type(data).__name__}, not an object", body)
    _raise_top_level_error(data)
    order_id = _id_text(data.get("order"))
    if order_id is None:
        raise ReplyError("add reply without an order id", body)
    return order_id


def parse_balance(body: bytes | str) -> tuple[Decimal, str | None]:
    """The account balance and its currency."""
    data = decode(body)
    if not isinstance(data, dict):
        raise ReplyError(f"balance reply is a {type(data).__name__}, not an object", body)
    _raise_top_level_error(data)
    balance = _decimal(data.get("balance"))
    if balance is None:
        raise ReplyError("balance reply without a numeric balance", body)
    return balance, _optional_text(data.get("currency"))


def parse_services(body: bytes | str) -> list[dict[str, Any]]:
    """The service list, entries as given (only objects are kept)."""
    data = decode(body)
    if isinstance(data, dict):
        _raise_top_level_error(data)
    if not isinstance(data, list):
        raise ReplyError(f"services reply is a {type(data).__name__}, not a list", body)
    return [item for item in data if isinstance(item, dict)]


def parse_cancel(body: bytes | str) -> dict[str, bool | str]:
    """Order id -> True (cancel accepted) or the provider's error text."""
    data = decode(body)
    if isinstance(data, dict):
        _raise_top_level_error(data)
        data = [data]
    if not isinstance(data, list):
        raise ReplyError(f"cancel reply is a {type(data).__name__}, not a list", body)
    result: dict[str, bool | str] = {}
    for item in data:
        order_id = _id_text(item.get("order")) if isinstance(item, dict) else None
        if order_id is not None:
            result[order_id] = _cancel_outcome(item.get("cancel"))
    return result


def _cancel_outcome(value: Any) -> bool | str:
    if value is True or (not isinstance(value, bool) and str(value).strip() in ("1", "1.0")):
        return True
    if isinstance(value, dict) and "error" in value:
        return _text(value["error"]) or "empty error"
    if isinstance(value, str) and value.strip():
        return value.strip()
    return f"cancel not accepted ({value!r})"


def _raise_top_level_error(data: Mapping[str, Any], wanted: Sequence[str] = ()) -> None:
    if "error" in data and "error" not in wanted:
        raise ProviderErrorReply(_text(data["error"]) or "empty error")


def _match_keys(data: Mapping[str, Any], wanted: Sequence[str]) -> dict[str, str]:
    """Requested id -> reply key; tolerates " 12" or "012" keys for "12"."""
    found = {order_id: order_id for order_id in wanted if order_id in data}
    if len(found) == len(wanted):
        return found
    loose = {_loose_id(key): key for key in data}
    for order_id in wanted:
        if order_id not in found and (key := loose.get(_loose_id(order_id))) is not None:
            found[order_id] = key
    return found


def _loose_id(order_id: str) -> str:
    text = order_id.strip()
    return str(int(text)) if text.isdigit() else text


def _index_by_order(items: list[Any]) -> dict[str, Any]:
    indexed: dict[str, Any] = {}
    for item in items:
        order_id = _id_text(item.get("order")) if isinstance(item, dict) else None
        if order_id is not None:
            indexed[order_id] = item
    return indexed


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    return _text(value)


def _looks_like_html(body: bytes | str) -> bool:
    head = body[:512].lstrip().lower()
    if isinstance(head, bytes):
        return head.startswith((b"<!doctype", b"<html", b"<"))
    return head.startswith(("<!doctype", "<html", "<"))
