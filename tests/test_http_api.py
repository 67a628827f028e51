"""The /v1 HTTP API, health and metrics, over real HTTP with a real database and Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis

from monitoring.metrics import process_metrics
from paxyo.keys import Keys
from paxyo.settings import Settings
from tests.support import ServerThread, free_port, http_json
from wsgateway.app import create_app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {"id": 123, "user_id": 111, "provider": "GodOfPanel", "provider_order_id": 23501,
         "quantity": 1000, "charge": "10.00", "service": 1, "link": "https://example.com/p/1"}


def api_settings(sqlite_url: str, redis_url: str, redis_prefix: str, **env: str) -> Settings:
    """A gateway's settings for API tests: one provider (never called), fixed secrets."""
    return Settings.from_env({
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_GODOFPANEL_URL": "http://127.0.0.1:9/api/v2",  # never called here
        "PAXYO_PROVIDER_GODOFPANEL_KEY": "k",
        "PAXYO_JWT_SECRET": "test-jwt-secret-that-is-long-enough",
        "PAXYO_ADMIN_TOKEN": TOKEN,
        **env,
    })


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return http_json(method, self.url + path, body, AUTH if headers is None else headers)

    def deposit(self, user_id: int | str, amount: Any, reference: str = "pay-981"):
        return self.call("POST", f"/v1/accounts/{user_id}/deposits",
                         {"amount": amount, "reference": reference})

    def balance(self, user_id: int) -> str:
        status, body = self.call("GET", f"/v1/accounts/{user_id}")
        assert status == 200, body
        return body["balance"]


def _serve(settings: Settings) -> Iterator[Api]:
    server = ServerThread(lambda: create_app(settings, process_metrics()))
    server.start()
    try:
        yield Api(server.url)
    finally:
        server.stop()


@pytest.fixture
def gateway_settings(sqlite_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return api_settings(sqlite_url, redis_url, redis_prefix)


@pytest.fixture
def api(gateway_settings: Settings) -> Iterator[Api]:
    yield from _serve(gateway_settings)


@pytest.fixture
def api_without_redis(gateway_settings: Settings) -> Iterator[Api]:
    yield from _serve(gateway_settings.with_overrides(
        redis_url=f"redis://127.0.0.1:{free_port()}/0"))


# -- deposits and accounts ----------------------------------------------------------------------

def test_deposit_is_applied_once_per_reference(api: Api) -> None:
    assert api.deposit(111, "25.00") == (201, {"user_id": 111, "balance": "25.00"})
    assert api.deposit(111, "25.00") == (200, {"user_id": 111, "balance": "25.00"})
    assert api.deposit(111, 5, reference="pay-982") == (201, {"user_id": 111, "balance": "30.00"})
    assert api.call("GET", "/v1/accounts/111") == (
        200, {"user_id": 111, "balance": "30.00", "currency": "USD"})


def test_same_reference_with_another_amount_conflicts(api: Api) -> None:
    api.deposit(111, "25.00")
    status, body = api.deposit(111, "26.00")
    assert status == 409 and "pay-981" in body["error"]
    assert api.balance(111) == "25.00"


@pytest.mark.parametrize(("amount", "word"), [
    (25.5, "float"), (25.0, "float"), ("25.001", "decimals"), ("0", "positive"),
    ("-3.00", "positive"), ("abc", "decimal"), ("NaN", "finite"), ("1e40", "1e40"),
    ("9999999999999999", "large"),
    (True, "amount"), (None, "required"), ([], "amount"),
])
def test_bad_amounts_are_refused(api: Api, amount: Any, word: str) -> None:
    status, body = api.deposit(111, amount)
    assert status == 400, body
    assert word in body["error"] and "amount" in body["error"]
    assert api.call("GET", "/v1/accounts/111")[0] == 404


@pytest.mark.parametrize("reference", ["", "   ", "x" * 151, 5, None])
def test_bad_references_are_refused(api: Api, reference: Any) -> None:
    status, body = api.deposit(111, "1.00", reference=reference)
    assert status == 400 and "reference" in body["error"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"[1, 2]", b'"text"', b"null"])
def test_bad_json_is_refused(api: Api, raw: bytes) -> None:
    status, body = api.call("POST", "/v1/accounts/111/deposits", raw)
    assert status == 400 and "error" in body


@pytest.mark.parametrize("user_id", ["abc", "0", "-1", "1.5", "99999999999999999999"])
def test_non_integer_user_id_in_path_is_a_400(api: Api, user_id: str) -> None:
    assert api.deposit(user_id, "1.00")[0] == 400
    assert api.call("GET", f"/v1/accounts/{user_id}")[0] == 400


def test_unknown_account_is_a_404(api: Api) -> None:
    status, body = api.call("GET", "/v1/accounts/999")
    assert status == 404 and "999" in body["error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_a_401(api: Api, headers: dict[str, str]) -> None:
    for method, path, body in [("POST", "/v1/accounts/111/deposits",
                                {"amount": "1.00", "reference": "r"}),
                               ("GET", "/v1/accounts/111", None),
                               ("POST", "/v1/orders", ORDER), ("GET", "/v1/orders/123", None)]:
        status, reply = api.call(method, path, body, headers)
        assert status == 401 and "token" in reply["error"]
    assert api.call("GET", "/v1/accounts/111")[0] == 404  # nothing was deposited


def test_unknown_route_and_wrong_method_answer_json(api: Api) -> None:
    assert api.call("GET", "/v1/nothing-here") == (404, {"error": "not found"})
    assert api.call("DELETE", "/v1/orders/123") == (405, {"error": "method not allowed"})


# -- orders ------------------------------------------------------------------------------------

def test_order_placement_debits_the_charge_once(api: Api) -> None:
    api.deposit(111, "25.00")
    status, order = api.call("POST", "/v1/orders", ORDER)
    assert status == 201, order
    assert api.balance(111) == "15.00"
    again = api.call("POST", "/v1/orders", {**ORDER, "provider": "godofpanel",
                                            "provider_order_id": "23501"})
    assert again == (200, order)
    assert api.balance(111) == "15.00"


def test_order_view(api: Api) -> None:
    api.deposit(111, "25.00")
    api.call("POST", "/v1/orders", ORDER)
    status, order = api.call("GET", "/v1/orders/123")
    assert status == 200
    assert order | {"created_at": None, "updated_at": None} == {
        "id": 123, "user_id": 111, "provider": "godofpanel", "provider_order_id": "23501",
        "service": "1", "link": "https://example.com/p/1", "status": "Pending",
        "remains": 1000, "quantity": 1000, "charge": "10.00", "refunded": "0.00",
        "provider_status": None, "created_at": None, "updated_at": None, "checked_at": None}


def test_same_id_with_another_body_conflicts(api: Api) -> None:
    api.deposit(111, "25.00")
    api.call("POST", "/v1/orders", ORDER)
    status, body = api.call("POST", "/v1/orders", {**ORDER, "quantity": 2000})
    assert status == 409 and "123" in body["error"]
    assert api.balance(111) == "15.00"


def test_low_balance_conflicts(api: Api) -> None:
    api.deposit(111, "5.00")
    status, body = api.call("POST", "/v1/orders", ORDER)
    assert status == 409 and "balance" in body["error"]
    assert api.balance(111) == "5.00"
    assert api.call("GET", "/v1/orders/123")[0] == 404
    assert api.call("POST", "/v1/orders", {**ORDER, "user_id": 222})[0] == 409  # no account


@pytest.mark.parametrize(("change", "field"), [
    ({"id": "123"}, "id"), ({"id": 0}, "id"), ({"id": None}, "id"), ({"id": 2**63}, "id"),
    ({"user_id": -1}, "user_id"), ({"user_id": True}, "user_id"),
    ({"provider": ""}, "provider"), ({"provider": "x" * 65}, "provider"),
    ({"provider": "nosuch"}, "provider"), ({"provider": 7}, "provider"),
    ({"provider_order_id": ""}, "provider_order_id"),
    ({"provider_order_id": 1.5}, "provider_order_id"),
    ({"provider_order_id": "x" * 65}, "provider_order_id"),
    ({"quantity": 0}, "quantity"), ({"quantity": "1000"}, "quantity"),
    ({"charge": 10.0}, "charge"), ({"charge": "10.001"}, "charge"), ({"charge": "0"}, "charge"),
    ({"service": 1.5}, "service"), ({"service": "x" * 65}, "service"),
    ({"link": 5}, "link"),
])
def test_invalid_orders_are_refused_naming_the_field(api: Api, change: dict, field: str) -> None:
    api.deposit(111, "25.00")
    status, body = api.call("POST", "/v1/orders", {**ORDER, **change})
    assert status == 400, body
    assert field in body["error"]
    assert api.balance(111) == "25.00"


def test_optional_order_fields_may_be_left_out(api: Api) -> None:
    api.deposit(111, "25.00")
    body = {k: v for k, v in ORDER.items() if k not in ("service", "link")}
    status, order = api.call("POST", "/v1/orders", body)
    assert status == 201 and order["service"] is None and order["link"] is None


def test_unknown_and_malformed_order_ids(api: Api) -> None:
    assert api.call("GET", "/v1/orders/404")[0] == 404
    assert api.call("GET", "/v1/orders/abc")[0] == 400


# -- events ------------------------------------------------------------------------------------

def test_deposit_event_is_published_to_the_stream(api: Api, gateway_settings: Settings) -> None:
    api.deposit(111, "25.00")
    client = redis.Redis.from_url(gateway_settings.redis_url)
    try:
        entries = client.xrange(Keys(gateway_settings.redis_prefix).events)
    finally:
        client.close()
    assert len(entries) == 1
    event = orjson.loads(entries[0][1][b"d"])
    assert event["type"] == "balance.updated"
    assert event["user_id"] == 111 and event["balance"] == "25.00" and event["id"]
    assert api.deposit(111, "25.00")[0] == 200  # a repeat publishes nothing new


def test_api_answers_while_redis_is_down(api_without_redis: Api) -> None:
    assert api_without_redis.deposit(111, "25.00") == (201, {"user_id": 111, "balance": "25.00"})
    assert api_without_redis.call("POST", "/v1/orders", ORDER)[0] == 201
    assert api_without_redis.balance(111) == "15.00"


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
def test_a_database_that_does_not_answer_is_a_503_to_retry_not_a_500(
        gateway_settings: Settings, tmp_path, where: str, caplog) -> None:
    """PostgreSQL down (nothing listens), or a SQLite file whose schema is gone."""
    if where == "postgresql":
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"  # no tables: "no such table"
    for api in _serve(gateway_settings.with_overrides(database_url=url)):
        for method, path, body in (("GET", "/v1/accounts/111", None),
                                   ("POST", "/v1/accounts/111/deposits",
                                    {"amount": "1.00", "reference": "r"}),
                                   ("POST", "/v1/orders", ORDER), ("GET", "/v1/orders/5", None)):
            status, answer = api.call(method, path, body)
            assert status == 503, (method, path, answer)
            assert answer["error"].startswith("database unavailable")
    assert "Traceback" not in caplog.text and "unhandled error" not in caplog.text


# -- health and metrics ------------------------------------------------------------------------

def test_healthz(api: Api) -> None:
    assert api.call("GET", "/healthz", headers={}) == (200, {"status": "ok"})


def test_readyz_with_redis_up(api: Api) -> None:
    assert api.call("GET", "/readyz", headers={}) == (
        200, {"status": "ready", "database": "ok", "redis": "ok"})


def test_readyz_names_an_unreachable_redis(api_without_redis: Api) -> None:
    status, body = api_without_redis.call("GET", "/readyz", headers={})
    assert status == 503
    assert body["database"] == "ok" and body["redis"] == "unreachable"
    assert "redis" in body["error"]


def test_metrics(api: Api) -> None:
    import urllib.request

    with urllib.request.urlopen(api.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b"paxyo_" in response.read()


def test_integer_beyond_64_bits_is_a_400(api: Api) -> None:
    raw = orjson.dumps(ORDER).replace(b'"id":123', b'"id":123456789012345678901234567890')
    status, body = api.call("POST", "/v1/orders", raw)
    assert status == 400 and "id" in body["error"]


# -- bad input: always a 400 naming the field, never a 500 or a traceback -------------------------

@pytest.fixture
def any_api(any_database_url: str, redis_url: str, redis_prefix: str) -> Iterator[Api]:
    """The API on each database: some bad input only broke on one of them."""
    yield from _serve(api_settings(any_database_url, redis_url, redis_prefix))


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test when the gateway logged an error (bad input must never log a traceback)."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


def _assert_refused(reply: tuple[int, Any], field: str) -> None:
    status, body = reply
    assert status == 400, (field, reply)
    assert isinstance(body, dict) and list(body) == ["error"], (field, body)
    assert field in body["error"], (field, body)


@pytest.mark.parametrize("authorization", [
    "Bearer \xe9", "\xe9", "Bearer caf\xe9", f"Bearer {TOKEN}\xe9", "Bearer \xff\xfe",
])
def test_non_ascii_authorization_is_a_401(api: Api, authorization: str,
                                          no_tracebacks: None) -> None:
    for method, path, body in [("GET", "/v1/accounts/111", None),
                               ("POST", "/v1/orders", ORDER)]:
        status, reply = api.call(method, path, body, {"Authorization": authorization})
        assert status == 401 and "token" in reply["error"], reply


_NUL_FIELDS = [
    ("reference", {"reference": "pay\x00981"}),
    ("reference", {"reference": "\x00"}),
    ("reference", {"reference": "pay\n981"}),
    ("reference", {"reference": "pay\ud800"}),
]


def test_control_characters_in_a_reference_are_refused(any_api: Api,
                                                       no_tracebacks: None) -> None:
    for field, change in _NUL_FIELDS:
        raw = orjson.dumps({"amount": "1.00", "reference": "r"}).replace(
            b'"r"', _json_string(change["reference"]))
        _assert_refused(any_api.call("POST", "/v1/accounts/111/deposits", raw), field)
    assert any_api.call("GET", "/v1/accounts/111")[0] == 404


def _json_string(value: str) -> bytes:
    """A JSON string literal, lone surrogates escaped as \\uXXXX (orjson refuses to write them)."""
    import json

    return json.dumps(value).encode()


_BAD_ORDER_FIELDS = [
    ({"provider_order_id": "235\x0001"}, "provider_order_id"),
    ({"provider_order_id": "1,2"}, "provider_order_id"),
    ({"provider_order_id": "1, 2"}, "provider_order_id"),
    ({"provider_order_id": "1 2"}, "provider_order_id"),
    ({"provider_order_id": " 12"}, "provider_order_id"),
    ({"provider_order_id": "12\n"}, "provider_order_id"),
    ({"provider_order_id": "ab-c"}, "provider_order_id"),
    ({"provider_order_id": "\u0661\u0662"}, "provider_order_id"),   # Arabic-Indic digits
    ({"provider_order_id": "\uff11\uff12"}, "provider_order_id"),   # fullwidth digits
    ({"provider_order_id": "x" * 65}, "provider_order_id"),
    ({"provider_order_id": 0}, "provider_order_id"),
    ({"provider_order_id": -5}, "provider_order_id"),
    ({"provider_order_id": True}, "provider_order_id"),
    ({"provider_order_id": 10**70}, "provider_order_id"),
    ({"service": "1\x00"}, "service"), ({"service": "a\tb"}, "service"),
    ({"service": True}, "service"), ({"service": -1}, "service"),
    ({"link": "https://x\x00"}, "link"), ({"link": "https://x\r\nSet-Cookie: a"}, "link"),
    ({"link": "x" * 4097}, "link"), ({"link": ""}, "link"),
    ({"provider": "godofpanel\x00"}, "provider"), ({"provider": "other"}, "provider"),
    ({"provider": "GODOFPANEL "}, "provider"),
    ({"quantity": 10**9 + 1}, "quantity"), ({"quantity": 2**63}, "quantity"),
    ({"quantity": True}, "quantity"), ({"quantity": -1}, "quantity"),
    ({"user_id": 2**63}, "user_id"), ({"user_id": 0}, "user_id"),
    ({"charge": "\u0663"}, "charge"), ({"charge": "1E1"}, "charge"),
    ({"charge": "10000000000"}, "charge"), ({"charge": 10**10}, "charge"),
]


def test_bad_order_fields_are_refused_on_every_database(any_api: Api,
                                                        no_tracebacks: None) -> None:
    import json

    any_api.deposit(111, "25.00")
    for change, field in _BAD_ORDER_FIELDS:
        raw = json.dumps({**ORDER, **change}).encode()  # orjson cannot write 10**70
        _assert_refused(any_api.call("POST", "/v1/orders", raw), field)
    assert any_api.balance(111) == "25.00"
    assert any_api.call("GET", "/v1/orders/123")[0] == 404


def test_order_at_the_documented_maxima_is_accepted(any_api: Api, no_tracebacks: None) -> None:
    any_api.deposit(111, "9999999999.99")
    status, order = any_api.call("POST", "/v1/orders", {
        **ORDER, "provider_order_id": "Ab9" + "z" * 61, "quantity": 10**9,
        "charge": "9999999999.99", "service": "s" * 64, "link": "l" * 4096})
    assert status == 201, order
    assert order["provider_order_id"] == "Ab9" + "z" * 61 and order["quantity"] == 10**9
    assert any_api.balance(111) == "0.00"


@pytest.mark.parametrize("amount", [
    "\u0663", "\uff15", "\u0661\u0660\u0660.\u0660\u0660", "1_000", "1E2", "1e2", "+5", " 5",
    "5 ", "5\n", "5.", ".5", "0x10", "Infinity", "-Infinity", "sNaN", "1,00", "1.0.0", "",
    "10000000000", "10000000000.00", "99999999999", 10**10, 10**18, -1, "-0.01",
])
def test_amounts_must_be_ascii_decimals_below_the_limit(api: Api, amount: Any,
                                                        no_tracebacks: None) -> None:
    _assert_refused(api.deposit(111, amount), "amount")
    assert api.call("GET", "/v1/accounts/111")[0] == 404


def test_plain_amounts_are_still_accepted(api: Api) -> None:
    assert api.deposit(111, "0.01", reference="a") == (201, {"user_id": 111, "balance": "0.01"})
    assert api.deposit(111, "007", reference="b")[0] == 201
    assert api.deposit(111, 3, reference="c") == (201, {"user_id": 111, "balance": "10.01"})
    assert api.deposit(111, "9999999989.98", reference="d")[1]["balance"] == "9999999999.99"


def test_a_balance_never_reaches_the_money_limit(any_api: Api, no_tracebacks: None) -> None:
    assert any_api.deposit(111, "9999999999.99", reference="a")[0] == 201
    _assert_refused(any_api.deposit(111, "0.01", reference="b"), "amount")
    assert any_api.balance(111) == "9999999999.99"
    assert any_api.deposit(111, "9999999999.99", reference="a")[0] == 200  # the repeat still is


def test_repeated_large_deposits_never_overflow_the_column(any_api: Api,
                                                           no_tracebacks: None) -> None:
    statuses = [any_api.deposit(111, "999999999999999", reference=f"r{n}")[0] for n in range(12)]
    statuses += [any_api.deposit(111, "9999999999", reference=f"s{n}")[0] for n in range(3)]
    assert set(statuses) <= {201, 400}, statuses
    assert Decimal(any_api.balance(111)) < Decimal(10) ** 10


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"amount": NaN, "reference": "r"}', "amount"),
    (b'{"amount": Infinity, "reference": "r"}', "amount"),
    (b'{"amount": -Infinity, "reference": "r"}', "amount"),
    (b'{"amount": 1e400, "reference": "r"}', "amount"),
    (b'{"amount": 100000000000000000000000000000, "reference": "r"}', "amount"),
    (b'{"amount": "1.00", "reference": true}', "reference"),
    (b'{"amount": "1.00", "reference": NaN}', "reference"),
    (b'{"amount": "1.00", "reference": "\\ud800"}', "reference"),
    (b'{"amount": "1.00", "reference": "\\u0000"}', "reference"),
    (b'{"amount": "1.00", "reference": "r\xff"}', "body"),
    (b'{"amount": "1.00", "reference": "r", "x": "\xed\xa0\x80"}', "body"),  # raw surrogate
    (b'[' * 100000, "body"),
    (b'{"amount": "1.00", "reference": "r"} trailing', "body"),
])
def test_odd_json_is_a_400_naming_the_field(api: Api, raw: bytes, field: str,
                                            no_tracebacks: None) -> None:
    _assert_refused(api.call("POST", "/v1/accounts/111/deposits", raw), field)


_BAD_PATHS = [
    "/v1/accounts/-1", "/v1/accounts/0", "/v1/accounts/%00", "/v1/accounts/1%00",
    "/v1/accounts/%D9%A3", "/v1/accounts/9223372036854775808", "/v1/accounts/+1",
    "/v1/accounts/%201", "/v1/orders/0", "/v1/orders/-1", "/v1/orders/%EF%BC%95",
    "/v1/orders/1e3", "/v1/orders/0x10", "/v1/orders/99999999999999999999999",
]


def test_bad_ids_in_paths_are_a_400(any_api: Api, no_tracebacks: None) -> None:
    for path in _BAD_PATHS:
        field = "user_id" if "accounts" in path else "order_id"
        _assert_refused(any_api.call("GET", path), field)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", "x-unknown", "gzip, gzip",
                                      "x-gzip", "compress", "identity, gzip"])
def test_a_body_not_in_its_content_encoding_is_a_400(api: Api, encoding: str,
                                                     no_tracebacks: None) -> None:
    raw = orjson.dumps({"amount": "1.00", "reference": "r"})
    status, body = api.call("POST", "/v1/accounts/111/deposits", raw,
                            {**AUTH, "Content-Encoding": encoding})
    assert status == 400 and "body" in body["error"], (status, body)
    assert api.call("GET", "/v1/accounts/111")[0] == 404


def test_an_encoding_aiohttp_cannot_decode_is_a_400(api: Api, no_tracebacks: None) -> None:
    """br without Brotli installed: aiohttp's parser refuses it (plain text) before any handler."""
    raw = orjson.dumps({"amount": "1.00", "reference": "r"})
    status, _ = api.call("POST", "/v1/accounts/111/deposits", raw,
                         {**AUTH, "Content-Encoding": "br"})
    assert status == 400
    assert api.call("GET", "/v1/accounts/111")[0] == 404


def test_a_gzip_body_is_accepted(api: Api) -> None:
    import gzip

    raw = gzip.compress(orjson.dumps({"amount": "1.00", "reference": "r"}))
    assert api.call("POST", "/v1/accounts/111/deposits", raw,
                    {**AUTH, "Content-Encoding": "gzip"}) == (
        201, {"user_id": 111, "balance": "1.00"})


def test_an_order_for_an_unconfigured_provider_is_refused(
        sqlite_url: str, redis_url: str, redis_prefix: str, no_tracebacks: None) -> None:
    settings = api_settings(sqlite_url, redis_url, redis_prefix).with_overrides(providers={})
    for api in _serve(settings):
        api.deposit(111, "25.00")
        _assert_refused(api.call("POST", "/v1/orders", ORDER), "provider")
        assert api.balance(111) == "25.00"

