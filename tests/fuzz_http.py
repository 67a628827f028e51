"""Generated requests for every /v1 route and /ws, and the contract every reply must keep.

Shared by the bounded property test (tests/test_fuzz_http.py) and bench/fuzz.py. Requests mix
valid input (small pools of users, orders and references, so that deposits repeat, orders
conflict and balances run low) with the hostile kind: NUL and control characters, lone
surrogates, other scripts' digits, exponents, huge and negative numbers, NaN, wrong types,
commas in ids, non-ASCII Authorization bytes, bodies that are not in their Content-Encoding,
truncated and non-object JSON, malformed path ids and /ws query strings.

The contract (:func:`check_reply`): never a 5xx; every error is ``{"error": str}`` with 400,
401, 404, 405 (only for a method the route has not) or 409; a 2xx POST only for input that an
independent, strict reading of design.md calls valid (no loose acceptance); /ws answers 101
with a hello as its first frame, or 400/401 with ``{"error": str}``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import unicodedata
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import strategies as st

from paxyo.limits import MAX_ID, MAX_QUANTITY, MONEY_LIMIT

ADMIN_TOKEN = "fuzz-admin-token"
JWT_SECRET = "fuzz-jwt-secret-that-is-long-enough-for-hs256"
PROVIDERS = ("sim",)
USERS = (1, 2, 3)
ORDER_IDS = (1, 2, 3, 4, 5, 6)
REFERENCES = ("r1", "r2", "r3", "pay-981")
MISSING = object()  # a field left out of the body

NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\n", "12\n", "\r\n", "\t", "\x7f", "\u0661\u0662\u0663",
    "\uff11\uff12", "\u0663", "\uff15", "1_000", "1E2", "1e2", "1e-2", "+5", "-5", " 5", "5 ",
    "5.", ".5", "1..0", "0x10", "NaN", "nan", "Infinity", "-Infinity", "sNaN", "1,2", "1, 2",
    "1 2", "\u202e12", "\ufeff1", "\U0001d7d9", "x" * 65, "x" * 151, "9" * 41, "1" + "0" * 10,
    "9999999999.99", "10000000000", "' OR 1=1 --", "%00", "\\u0000", "caf\u00e9",
    "\U0001f600", "\u0130", "SIM", "sim ", " sim", "sim\x00", "https://x/p",
]
SURROGATES = ["\ud800", "a\udfff", "\udce9"]  # only json.dumps writes these
ODD_NUMBERS = [0, 1, -1, MAX_ID, MAX_ID + 1, 2**64, -(2**63), MAX_QUANTITY, MAX_QUANTITY + 1,
               10**10, 10**10 - 1, 10**30]


@dataclass
class Request:
    method: str
    path: str  # already percent-encoded
    headers: dict[str, str] = field(default_factory=dict)  # values sent as latin-1 bytes
    body: bytes | None = None
    route: str = ""  # deposit, account, order, order_view, unknown, ws
    fields: Any = None  # the decoded body when it was well-formed JSON, for the oracle
    well_formed: bool = True  # body and headers were valid transport (JSON, encoding, auth)
    path_id: Any = None


@dataclass
class Reply:
    status: int
    body: bytes
    first_frame: bytes | None = None  # /ws after a 101


# -- strategies ----------------------------------------------------------------------------------

def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(ODD_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
        st.sampled_from(NASTY_STRINGS + SURROGATES), st.just([]), st.just({}),
        st.just(MISSING),
    )


def valid_money() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(1, 500).map(str), st.integers(1, 500),
        st.decimals(Decimal("0.01"), Decimal("9999999999.99"), places=2).map(str),
        st.sampled_from(["0.01", "10.00", "25", "9999999999.99", "007.50", "1.000"]),
    )


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any],
            one_in: int) -> st.SearchStrategy[Any]:
    """``bad`` about once in ``one_in`` draws (one_of would weigh them evenly)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == one_in - 1 else good)


def _sometimes_nasty(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _mostly(valid, json_scalars(), 10)


def deposit_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "amount": _sometimes_nasty(valid_money()),
        "reference": _sometimes_nasty(st.one_of(st.sampled_from(REFERENCES),
                                                st.text(min_size=1, max_size=30))),
    }, optional={"extra": json_scalars()})


def order_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "id": _sometimes_nasty(st.sampled_from(ORDER_IDS)),
        "user_id": _sometimes_nasty(st.sampled_from(USERS)),
        "provider": _sometimes_nasty(st.sampled_from(["sim", "SIM", "Sim"])),
        "provider_order_id": _sometimes_nasty(st.one_of(
            st.integers(1, 10**6), st.from_regex(r"[A-Za-z0-9]{1,64}", fullmatch=True))),
        "quantity": _sometimes_nasty(st.one_of(st.integers(1, 1000),
                                               st.sampled_from([MAX_QUANTITY])),),
        "charge": _sometimes_nasty(valid_money()),
    }, optional={
        "service": _sometimes_nasty(st.one_of(st.integers(1, 1000), st.text(max_size=70))),
        "link": _sometimes_nasty(st.one_of(st.just("https://example.com/p/1"),
                                           st.text(max_size=50))),
    })


def path_ids(pool: tuple[int, ...]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(pool).map(str), st.sampled_from(pool).map(str),
        st.integers(-10, 2**65).map(str), st.sampled_from(ODD_NUMBERS).map(str),
        st.sampled_from(NASTY_STRINGS).map(lambda s: quote(s, safe="")),
        st.text(max_size=10).map(lambda s: quote(s, safe="")),
    )


def authorizations() -> st.SearchStrategy[str | None]:
    good = f"Bearer {ADMIN_TOKEN}"
    return _mostly(st.just(good), st.one_of(
        st.sampled_from([None, "Bearer wrong", ADMIN_TOKEN, "Bearer \xe9", "\xe9",
                         f"Bearer {ADMIN_TOKEN}\xe9", "Bearer caf\xe9", "Basic xyz",
                         f"bearer {ADMIN_TOKEN}", f"Bearer  {ADMIN_TOKEN} ", "Bearer"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                max_size=20).map(lambda s: "Bearer " + s),
    ), 8)


def _encode_json(draw: st.DrawFn, body: dict[str, Any]) -> bytes:
    kept = {k: v for k, v in body.items() if v is not MISSING}
    ascii_only = draw(st.booleans())
    return json.dumps(kept, allow_nan=True, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass")


@st.composite
def _bodies(draw: st.DrawFn, objects: st.SearchStrategy[dict[str, Any]]
            ) -> tuple[bytes, dict[str, str], Any, bool]:
    """(raw body, extra headers, decoded fields or None, well formed)."""
    body = draw(objects)
    raw = _encode_json(draw, body)
    fields = {k: v for k, v in body.items() if v is not MISSING}
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # a lone surrogate written raw: not UTF-8, so not JSON
        fields = None
    kind = draw(st.sampled_from(["plain"] * 30 + ["gzip", "deflate", "identity", "bad-gzip",
                                                  "bad-deflate", "unknown", "truncated",
                                                  "bytes", "array", "scalar", "deep"]))
    if kind == "plain":
        return raw, {}, fields, True
    if kind == "identity":
        return raw, {"Content-Encoding": "identity"}, fields, True
    if kind == "gzip":
        return gzip.compress(raw), {"Content-Encoding": "gzip"}, fields, True
    if kind == "deflate":
        return zlib.compress(raw), {"Content-Encoding": "deflate"}, fields, True
    if kind == "bad-gzip":
        return raw, {"Content-Encoding": "gzip"}, None, False
    if kind == "bad-deflate":
        return raw, {"Content-Encoding": "deflate"}, None, False
    if kind == "unknown":
        encoding = draw(st.sampled_from(["x-junk", "gzip, gzip", "x-gzip", "compress", "GZIP2"]))
        return raw, {"Content-Encoding": encoding}, None, False
    if kind == "truncated":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))], {}, None, False
    if kind == "bytes":
        return draw(st.binary(max_size=40)), {}, None, False
    if kind == "array":
        return b"[" + raw + b"]", {}, None, False
    if kind == "scalar":
        return draw(st.sampled_from([b"null", b"1", b'"x"', b"true", b"NaN", b""])), {}, None, False
    return b"[" * draw(st.integers(100, 5000)), {}, None, False


@st.composite
def http_requests(draw: st.DrawFn) -> Request:
    route = draw(st.sampled_from(["deposit"] * 4 + ["order"] * 4 + ["account", "order_view",
                                                                       "unknown"]))
    headers: dict[str, str] = {"Content-Type": "application/json"}
    auth = draw(authorizations())
    if auth is not None:
        headers["Authorization"] = auth
    # the scheme is case-insensitive (RFC 9110 11.1); spaces around the token are tolerated
    well_formed = auth is not None and re.fullmatch(
        rf"\s*bearer +{ADMIN_TOKEN}\s*", auth, re.IGNORECASE | re.ASCII) is not None
    body, fields, path_id = None, None, None
    if route == "deposit":
        path_id = draw(path_ids(USERS))
        path = f"/v1/accounts/{path_id}/deposits"
        body, extra, fields, ok = draw(_bodies(deposit_bodies()))
        headers.update(extra)
        well_formed = well_formed and ok
        method = "POST"
    elif route == "order":
        path = "/v1/orders"
        body, extra, fields, ok = draw(_bodies(order_bodies()))
        headers.update(extra)
        well_formed = well_formed and ok
        method = "POST"
    elif route == "account":
        path_id = draw(path_ids(USERS))
        path, method = f"/v1/accounts/{path_id}", "GET"
    elif route == "order_view":
        path_id = draw(path_ids(ORDER_IDS))
        path, method = f"/v1/orders/{path_id}", "GET"
    else:
        path, method = "/v1/" + quote(draw(st.text(max_size=12)), safe="/"), "GET"
    if draw(st.integers(0, 19)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    return Request(method, path, headers, body, route, fields, well_formed, path_id)


@st.composite
def ws_requests(draw: st.DrawFn, tokens: dict[int, str]) -> Request:
    parts = []
    token = draw(st.one_of(
        st.sampled_from(sorted(tokens.values())), st.sampled_from(sorted(tokens.values())),
        st.sampled_from(["", "a.b.c", "not-a-jwt", "%E9", "%FF%FE", "a%00.b.c", "%D9%A1.%D9%A2",
                         "x" * 5000]),
        st.text(max_size=20).map(lambda s: quote(s, safe="")), st.none()))
    if token is not None:
        parts.append(f"token={token}")
    last_id = draw(st.one_of(
        st.none(), st.integers(0, 50).map(lambda n: str(n).zfill(16)),
        st.integers(0, 10**21).map(str),
        st.sampled_from(NASTY_STRINGS).map(lambda s: quote(s, safe="")),
        st.text(max_size=8).map(lambda s: quote(s, safe=""))))
    if last_id is not None:
        parts.append(f"last_id={last_id}")
    path = "/ws" + ("?" + "&".join(parts) if parts else "")
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    return Request("GET", path, headers, None, "ws")


# -- sending -------------------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection to the gateway (reopened when the server closes it);
    /ws requests go over a socket of their own."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def send(self, request: Request) -> Reply:
        if request.route == "ws":
            return self._send_ws(request)
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
            try:
                self._conn.putrequest(request.method, request.path, skip_accept_encoding=True)
                for name, value in request.headers.items():
                    self._conn.putheader(name, value.encode("latin-1"))
                self._conn.putheader("Content-Length", str(len(request.body or b"")))
                self._conn.endheaders(request.body or b"")
                response = self._conn.getresponse()
                reply = Reply(response.status, response.read())
                if response.will_close:
                    self.close()
                return reply
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _send_ws(self, request: Request) -> Reply:
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            head = f"GET {request.path} HTTP/1.1\r\nHost: {self.host}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
            sock.sendall(head.encode("latin-1"))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            status_line, _, rest = data.partition(b"\r\n")
            status = int(status_line.split()[1])
            headers_raw, _, body = rest.partition(b"\r\n\r\n")
            if status == 101:
                return Reply(status, b"", _read_frame(sock, body))
            length = re.search(rb"(?im)^content-length:\s*(\d+)", headers_raw)
            while length and len(body) < int(length.group(1)):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return Reply(status, body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _read_frame(sock: socket.socket, data: bytes) -> bytes:
    """The payload of the server's first data frame (unmasked, unfragmented); control frames
    before it (the hub's heartbeat may ping a socket before its hello) are skipped."""
    def need(n: int) -> None:
        nonlocal data
        while len(data) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the first frame")
            data += chunk

    while True:
        need(2)
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            need(4)
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            need(10)
            length, offset = int.from_bytes(data[2:10], "big"), 10
        need(offset + length)
        opcode, payload, data = data[0] & 0x0F, data[offset:offset + length], \
            data[offset + length:]
        if opcode in (9, 10):  # ping, pong
            continue
        return payload if opcode == 1 else b"opcode %d" % opcode


# -- the contract --------------------------------------------------------------------------------

_ALLOWED = {"GET": {"account", "order_view"}, "POST": {"deposit", "order"}}


def check_reply(request: Request, reply: Reply) -> str | None:
    """None when the reply keeps the contract, else what is wrong (one line)."""
    if reply.status >= 500:
        return f"{reply.status} {reply.body[:200]!r}"
    if request.route == "ws":
        return _check_ws(reply)
    wrong_method = request.route in ("deposit", "order", "account", "order_view") and \
        request.route not in _ALLOWED.get(request.method, set())
    if reply.status >= 400:
        allowed = {400, 401, 404, 409} | ({405} if wrong_method else set())
        if reply.status not in allowed:
            return f"status {reply.status} not in {sorted(allowed)}"
        return _check_error_body(reply.body)
    if reply.status not in (200, 201):
        return f"unexpected status {reply.status}"
    try:
        orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return f"2xx body is not JSON: {reply.body[:100]!r}"
    if wrong_method:
        return f"{request.method} answered {reply.status} on a {request.route} route"
    if request.method == "POST":
        why = _invalid(request)
        if why:
            return f"loose acceptance ({reply.status}): {why}"
    return None


def _check_error_body(body: bytes) -> str | None:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error body is not JSON: {body[:100]!r}"
    if not (isinstance(decoded, dict) and list(decoded) == ["error"]
            and isinstance(decoded["error"], str) and decoded["error"]):
        return f"error body is not {{'error': str}}: {decoded!r}"
    return None


def _check_ws(reply: Reply) -> str | None:
    if reply.status == 101:
        try:
            hello = orjson.loads(reply.first_frame or b"")
        except orjson.JSONDecodeError:
            return f"first frame is not JSON: {reply.first_frame!r}"
        if not (isinstance(hello, dict) and hello.get("type") == "hello"):
            return f"first frame is not a hello: {hello!r}"
        return None
    if reply.status not in (400, 401):
        return f"/ws status {reply.status}"
    return _check_error_body(reply.body)


# An independent reading of design.md's input rules (not the gateway's code): what may be
# accepted. A 2xx for anything else is loose acceptance.

def _ok_id(value: Any, maximum: int = MAX_ID) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= maximum


def _ok_path_id(raw: str) -> bool:
    return re.fullmatch(r"[0-9]+", raw, re.ASCII) is not None and 1 <= int(raw) <= MAX_ID


def _ok_money(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return 0 < value < MONEY_LIMIT
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value, re.ASCII):
        return False
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return False
    return 0 < amount < MONEY_LIMIT and amount == amount.quantize(Decimal("0.01"))


def _ok_text(value: Any, max_length: int) -> bool:
    return (isinstance(value, str) and bool(value.strip()) and len(value) <= max_length
            and not any(unicodedata.category(c) in ("Cc", "Cs") for c in value))


def _invalid(request: Request) -> str | None:
    if not request.well_formed or not isinstance(request.fields, dict):
        return "the request was not well formed"
    f = request.fields
    if request.route == "deposit":
        checks = {"user_id": _ok_path_id(request.path_id), "amount": _ok_money(f.get("amount")),
                  "reference": _ok_text(f.get("reference"), 150)}
    else:
        poid = f.get("provider_order_id")
        service, link = f.get("service"), f.get("link")
        checks = {
            "id": _ok_id(f.get("id")), "user_id": _ok_id(f.get("user_id")),
            "provider": isinstance(f.get("provider"), str)
            and f["provider"].isascii() and f["provider"].lower() in PROVIDERS,
            "provider_order_id": (_ok_id(poid) and len(str(poid)) <= 64) or (
                isinstance(poid, str)
                and re.fullmatch(r"[A-Za-z0-9]{1,64}", poid, re.ASCII) is not None),
            "quantity": _ok_id(f.get("quantity"), MAX_QUANTITY),
            "charge": _ok_money(f.get("charge")),
            "service": service is None or _ok_id(service) or _ok_text(service, 64),
            "link": link is None or _ok_text(link, 4096),
        }
    bad = [name for name, ok in checks.items() if not ok]
    return f"invalid {', '.join(bad)} in {f!r}"[:300] if bad else None
