"""The /v1 HTTP API, health and metrics, over real HTTP with a real database and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from paxyo.keys import Keys
from paxyo.settings import Settings
from tests.support import ServerThread, free_port, http_json
from wsgateway.app import create_app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {"id": 123, "user_id": 111, "provider": "GodOfPanel", "provider_order_id": 23501,
         "quantity": 1000, "charge": "10.00", "service": 1, "link": "https://example.com/p/1"}


def _settings(sqlite_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings.from_env({
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_GODOFPANEL_URL": "http://127.0.0.1:9/api/v2",  # never called here
        "PAXYO_PROVIDER_GODOFPANEL_KEY": "k",
        "PAXYO_JWT_SECRET": "test-jwt-secret-that-is-long-enough",
        "PAXYO_ADMIN_TOKEN": TOKEN,
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
    server = ServerThread(lambda: create_app(settings))
    server.start()
    try:
        yield Api(server.url)
    finally:
        server.stop()


@pytest.fixture
def gateway_settings(sqlite_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return _settings(sqlite_url, redis_url, redis_prefix)


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
