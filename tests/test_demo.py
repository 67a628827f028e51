"""The demo page and its endpoints, over real HTTP with a real database, Redis and simulator."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis

from monitoring.metrics import process_metrics
from paxyo.accounts import deposit, get_balance
from paxyo.cli.demo import DEMO_USERS, SEED_ORDERS, demo_charge, seed_demo
from paxyo.cli.demo_web import setup_demo
from paxyo.cli.demo_webhooks import KEEP
from paxyo.keys import Keys
from paxyo.orders import get_order
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from paxyo.webhook_signature import sign
from tests.support import ServerThread, SimulatorHandle, http_json
from wsgateway.app import create_app
from wsgateway.auth import verify_token

SECRET = "test-jwt-secret-that-is-long-enough"
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//""",
                      re.I)
DEMO_PATHS = [("GET", "/"), ("GET", "/demo.js"), ("GET", "/demo.css"),
              ("POST", "/demo/login"), ("GET", "/demo/users/111/orders"),
              ("POST", "/demo/orders"), ("POST", "/demo/orders/1/simulate"),
              ("GET", "/favicon.ico"), ("POST", "/demo/webhook"), ("GET", "/demo/webhooks")]
WEBHOOK_SECRET = "test-webhook-secret"


class Demo:
    def __init__(self, url: str, simulator: SimulatorHandle) -> None:
        self.url = url
        self.simulator = simulator

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, self.url + path, body)

    def raw(self, path: str) -> tuple[int, str, bytes]:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()

    def place(self, quantity: int = 1000, user_id: int = 111) -> dict[str, Any]:
        status, body = self.call("POST", "/demo/orders", {"user_id": user_id,
                                                          "quantity": quantity, "service": 1})
        assert status == 201, body
        return body

    def deliver(self, body: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None,
                signature: str | None = None, event_id: str | None = None) -> tuple[int, Any]:
        """POST ``body`` to the demo's receiver the way the webhook sender does."""
        headers = {"Paxyo-Signature": sign(secret, body, int(time.time()) if at is None else at)
                   if signature is None else signature}
        if event_id is not None:
            headers["Paxyo-Event-Id"] = event_id
        return http_json("POST", self.url + "/demo/webhook", body, headers)

    def sim_order(self, provider_order_id: str) -> dict[str, Any]:
        status, body = http_json("GET", f"{self.simulator.url}/sim/orders/{provider_order_id}")
        assert status == 200, body
        return body


def _settings(sqlite_url: str, redis_url: str, redis_prefix: str, simulator: SimulatorHandle,
              demo: bool) -> Settings:
    return Settings.from_env({
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_DEMO_URL": simulator.api_url,
        "PAXYO_PROVIDER_DEMO_KEY": simulator.key,
        "PAXYO_JWT_SECRET": SECRET,
        "PAXYO_ADMIN_TOKEN": "test-admin-token",
        "PAXYO_WEBHOOK_URL": "http://127.0.0.1:9/demo/webhook",  # the receiver; none sends here
        "PAXYO_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PAXYO_DEMO": "1" if demo else "0",
    })


def _serve(settings: Settings, simulator: SimulatorHandle) -> Iterator[Demo]:
    server = ServerThread(lambda: create_app(settings, process_metrics(), extend=setup_demo))
    server.start()
    try:
        yield Demo(server.url, simulator)
    finally:
        server.stop()


@pytest.fixture
def demo(sqlite_url: str, redis_url: str, redis_prefix: str,
         simulator: SimulatorHandle) -> Iterator[Demo]:
    engine = open_engine(sqlite_url)
    try:
        deposit(engine, 111, Decimal("50.00"), "welcome", 2)
        deposit(engine, 222, Decimal("30.00"), "welcome", 2)
    finally:
        engine.dispose()
    yield from _serve(_settings(sqlite_url, redis_url, redis_prefix, simulator, True), simulator)


@pytest.fixture
def production(sqlite_url: str, redis_url: str, redis_prefix: str,
               simulator: SimulatorHandle) -> Iterator[Demo]:
    yield from _serve(_settings(sqlite_url, redis_url, redis_prefix, simulator, False), simulator)


# -- outside demo mode nothing of it exists -----------------------------------------------------

@pytest.mark.parametrize(("method", "path"), DEMO_PATHS)
def test_demo_routes_do_not_exist_outside_demo_mode(production: Demo, method: str,
                                                    path: str) -> None:
    body = {"user_id": 111, "quantity": 1000, "action": "cancel"} if method == "POST" else None
    status, reply = production.call(method, path, body)
    assert status == 404, reply
    assert "error" in reply


# -- the page -----------------------------------------------------------------------------------

def test_page_and_its_assets_are_served_without_external_resources(demo: Demo) -> None:
    status, content_type, html = demo.raw("/")
    assert status == 200 and content_type.startswith("text/html")
    assert b'<script src="/paxyo-realtime.js"></script>' in html
    assert b"Place test order" in html
    for path, kind in (("/demo.js", "javascript"), ("/demo.css", "text/css")):
        status, content_type, _ = demo.raw(path)
        assert status == 200 and kind in content_type
    for path in ("/", "/demo.js", "/demo.css"):
        text = demo.raw(path)[2].decode()
        assert not EXTERNAL.search(text), f"{path} loads something external"


# -- login --------------------------------------------------------------------------------------

def test_favicon_is_an_icon(demo: Demo) -> None:
    status, content_type, icon = demo.raw("/favicon.ico")
    assert status == 200 and content_type == "image/x-icon"
    assert icon[:4] == b"\x00\x00\x01\x00"  # an ICO header (a PNG inside)
    assert b'<link rel="icon" href="/favicon.ico">' in demo.raw("/")[2]


def test_login_returns_a_token_for_the_demo_user(demo: Demo) -> None:
    status, body = demo.call("POST", "/demo/login", {"user_id": 222})
    assert status == 200 and body["user_id"] == 222
    assert body["poll_interval"] == 30.0  # the settings' (the demo runs with 5 s)
    assert verify_token(SECRET, body["token"]) == 222


@pytest.mark.parametrize("body", [
    {"user_id": 333}, {"user_id": "111"}, {"user_id": 111.0}, {"user_id": True}, {},
    [111], b"not json",
])
def test_login_refuses_anyone_but_the_demo_users(demo: Demo, body: Any) -> None:
    status, reply = demo.call("POST", "/demo/login", body)
    assert status == 400 and "error" in reply


# -- orders -------------------------------------------------------------------------------------

def test_placing_an_order_debits_and_registers_it(demo: Demo, redis_url: str,
                                                  redis_prefix: str) -> None:
    first = demo.place(1000)
    assert (first["id"], first["user_id"], first["provider"]) == (1, 111, "demo")
    assert (first["charge"], first["refunded"], first["status"]) == ("10.00", "0.00", "Pending")
    assert demo.sim_order(first["provider_order_id"])["quantity"] == 1000
    second = demo.place(250)
    assert second["id"] == 2 and second["charge"] == "2.50"

    status, body = demo.call("GET", "/demo/users/111/orders")
    assert status == 200
    assert body["balance"] == "37.50"
    assert [order["id"] for order in body["orders"]] == [2, 1]  # newest first
    assert body["orders"][1] == first

    # Both placements were published (history of user 111 holds their events).
    client = redis.Redis.from_url(redis_url)
    try:
        events = [orjson.loads(m) for m in client.zrange(Keys(redis_prefix).history(111), 0, -1)]
    finally:
        client.close()
    # (earlier unpublished events of the user, such as its seed deposit, go out first)
    events = [e for e in events if e["type"] == "order.updated"]
    assert [(e["order_id"], e["status"], e["balance"]) for e in events] == [
        (1, "Pending", "40.00"), (2, "Pending", "37.50")]


def test_orders_of_another_demo_user_are_separate(demo: Demo) -> None:
    demo.place(1000, user_id=222)
    assert demo.call("GET", "/demo/users/111/orders")[1]["orders"] == []
    status, body = demo.call("GET", "/demo/users/222/orders")
    assert status == 200 and body["balance"] == "20.00" and len(body["orders"]) == 1
    assert demo.call("GET", "/demo/users/333/orders")[0] == 404
    assert demo.call("GET", "/demo/users/abc/orders")[0] == 400


def test_an_order_above_the_balance_never_reaches_the_provider(demo: Demo) -> None:
    before = demo.simulator.stats()
    status, body = demo.call("POST", "/demo/orders", {"user_id": 222, "quantity": 5000})
    assert status == 409 and "balance" in body["error"]
    assert demo.simulator.stats()["requests"] == before["requests"]
    assert demo.call("GET", "/demo/users/222/orders")[1]["balance"] == "30.00"


@pytest.mark.parametrize("body", [
    {"user_id": 111}, {"user_id": 111, "quantity": 0}, {"user_id": 111, "quantity": "1000"},
    {"user_id": 111, "quantity": 10.5}, {"user_id": 111, "quantity": 1000, "service": "x"},
    {"user_id": 999, "quantity": 1000}, {"quantity": 1000}, b"{",
])
def test_bad_order_bodies_are_refused(demo: Demo, body: Any) -> None:
    status, reply = demo.call("POST", "/demo/orders", body)
    assert status == 400 and "error" in reply
    assert demo.call("GET", "/demo/users/111/orders")[1]["balance"] == "50.00"


def test_a_refusal_by_the_provider_is_a_400_and_debits_nothing(demo: Demo) -> None:
    status, reply = demo.call("POST", "/demo/orders",
                              {"user_id": 111, "quantity": 10})  # below the service's minimum
    assert status == 400 and "provider" in reply["error"]
    assert demo.call("GET", "/demo/users/111/orders")[1] == {
        "user_id": 111, "balance": "50.00", "orders": []}


# -- simulate -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "status", "remains"), [
    ("cancel", "Canceled", 1000), ("partial", "Partial", 700), ("complete", "Completed", 0),
])
def test_simulate_sets_the_order_at_the_simulator(demo: Demo, action: str, status: str,
                                                  remains: int) -> None:
    order = demo.place(1000)
    code, reply = demo.call("POST", f"/demo/orders/{order['id']}/simulate", {"action": action})
    assert code == 200, reply
    assert (reply["status"], reply["remains"]) == (status, remains)
    at_simulator = demo.sim_order(order["provider_order_id"])
    assert (at_simulator["status"], at_simulator["remains"], at_simulator["frozen"]) == (
        status, remains, True)
    # The panel's side changes only when a worker checks the order, not here.
    assert demo.call("GET", "/demo/users/111/orders")[1]["orders"][0]["status"] == "Pending"


def test_partial_remains_are_seventy_percent_rounded_down(demo: Demo) -> None:
    order = demo.place(55)
    demo.call("POST", f"/demo/orders/{order['id']}/simulate", {"action": "partial"})
    assert demo.sim_order(order["provider_order_id"])["remains"] == 38


@pytest.mark.parametrize("body", [{"action": "refund"}, {}, {"action": None}, [1], b"x"])
def test_simulate_refuses_bad_actions(demo: Demo, body: Any) -> None:
    order = demo.place(1000)
    status, reply = demo.call("POST", f"/demo/orders/{order['id']}/simulate", body)
    assert status == 400 and "error" in reply


def test_simulate_an_unknown_order_is_404(demo: Demo) -> None:
    status, reply = demo.call("POST", "/demo/orders/77/simulate", {"action": "cancel"})
    assert status == 404 and "77" in reply["error"]


# -- seeding: orders that keep moving for minutes -----------------------------------------------

def test_seeded_orders_keep_moving_for_the_first_minutes() -> None:
    def open_at(seconds: float) -> list[int]:
        return [n for n, o in enumerate(SEED_ORDERS) if seconds < o.pending + o.running]

    ends = sorted(o.pending + o.running for o in SEED_ORDERS)
    assert len(open_at(120)) >= 4 and len(open_at(240)) >= 2 and ends[-1] >= 300
    assert max(b - a for a, b in zip([0.0, *ends], ends, strict=False)) <= 90  # one a minute or so
    for user_id in DEMO_USERS:
        mine = [o for o in SEED_ORDERS if o.user_id == user_id]
        assert {o.ends for o in mine} >= {"Completed", "Canceled"}  # a refund and a completion
        assert sum(demo_charge(o.quantity) for o in mine) <= DEMO_USERS[user_id] - 20  # room
    assert any(o.ends == "Partial" and 0 < o.remains < o.quantity for o in SEED_ORDERS)


def test_seeding_gives_each_order_its_schedule_at_the_simulator(
        sqlite_url: str, redis_url: str, redis_prefix: str, simulator: SimulatorHandle) -> None:
    settings = _settings(sqlite_url, redis_url, redis_prefix, simulator, True)
    seed_demo(settings, settings.providers["demo"], simulator.url)
    engine = open_engine(sqlite_url)
    try:
        placed = [get_order(engine, n, 2) for n in range(1, len(SEED_ORDERS) + 1)]
        balances = {u: get_balance(engine, u) for u in DEMO_USERS}
    finally:
        engine.dispose()
    for seed, order in zip(SEED_ORDERS, placed, strict=True):
        assert (order["user_id"], order["quantity"], order["status"]) == (
            seed.user_id, seed.quantity, "Pending")
        at_simulator = Demo("", simulator).sim_order(order["provider_order_id"])
        assert at_simulator["schedule"] == {
            "pending": seed.pending, "running": seed.running, "ends": seed.ends,
            "remains": seed.remains}
        assert (at_simulator["service"], at_simulator["frozen"]) == (seed.service, False)
    for user_id, welcome in DEMO_USERS.items():
        charged = sum(demo_charge(o.quantity) for o in SEED_ORDERS if o.user_id == user_id)
        assert balances[user_id] == welcome - charged


# -- the webhook receiver -----------------------------------------------------------------------

def _event(event_id: str = "0000000000000042", **fields: Any) -> bytes:
    return orjson.dumps({"type": "order.updated", "id": event_id, "order_id": 7, "user_id": 111,
                         "status": "Canceled", "previous_status": "In progress",
                         "remains": 1000, "quantity": 1000, "refund": "10.00",
                         "balance": "50.00", "at": "2026-01-05T10:00:00Z", **fields})


def test_a_signed_delivery_is_acknowledged_and_shown(demo: Demo) -> None:
    assert demo.call("GET", "/demo/webhooks")[1] == {"deliveries": [], "received": 0,
                                                     "refused": 0}
    status, reply = demo.deliver(_event(), event_id="0000000000000042")
    assert status == 200 and reply == {"received": "0000000000000042", "deliveries": 1}
    demo.deliver(_event("0000000000000043", type="balance.updated", order_id=None))
    view = demo.call("GET", "/demo/webhooks")[1]
    assert (view["received"], view["refused"]) == (2, 0)
    newest, first = view["deliveries"]
    assert newest["event_id"] == "0000000000000043" and newest["type"] == "balance.updated"
    assert {k: first[k] for k in ("event_id", "type", "order_id", "user_id", "status",
                                  "refund", "balance", "deliveries")} == {
        "event_id": "0000000000000042", "type": "order.updated", "order_id": 7, "user_id": 111,
        "status": "Canceled", "refund": "10.00", "balance": "50.00", "deliveries": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["received_at"])


def test_a_repeated_delivery_is_counted_once(demo: Demo) -> None:
    for _ in range(3):
        assert demo.deliver(_event())[0] == 200  # at least once: acknowledged every time
    view = demo.call("GET", "/demo/webhooks")[1]
    assert len(view["deliveries"]) == 1 and view["deliveries"][0]["deliveries"] == 3


def test_the_receiver_keeps_the_last_deliveries_only(demo: Demo) -> None:
    for n in range(KEEP + 5):
        assert demo.deliver(_event(f"{n:016d}"))[0] == 200
    kept = [d["event_id"] for d in demo.call("GET", "/demo/webhooks")[1]["deliveries"]]
    assert kept == [f"{n:016d}" for n in reversed(range(5, KEEP + 5))]


def _tampered(body: bytes) -> dict[str, Any]:
    good = sign(WEBHOOK_SECRET, body, int(time.time()))
    return {"body": body.replace(b'"10.00"', b'"99.00"'), "signature": good}


@pytest.mark.parametrize("case", [
    pytest.param(lambda: _tampered(_event()), id="body changed after signing"),
    pytest.param(lambda: {"body": _event(), "secret": "another secret"}, id="wrong secret"),
    pytest.param(lambda: {"body": _event(), "at": int(time.time()) - 301}, id="too old"),
    pytest.param(lambda: {"body": _event(), "at": int(time.time()) + 301}, id="from the future"),
    pytest.param(lambda: {"body": _event(), "signature": ""}, id="no signature"),
    pytest.param(lambda: {"body": _event(), "signature": "t=1,v1=00"}, id="garbage signature"),
    pytest.param(lambda: {"body": b"not json"}, id="signed, not JSON"),
    pytest.param(lambda: {"body": b'{"id": 5, "type": "order.updated"}'}, id="signed, no event"),
    pytest.param(lambda: {"body": _event(), "event_id": "0000000000000099"},
                 id="event id header differs"),
])
def test_a_forged_or_bad_delivery_is_refused_with_400(demo: Demo, case: Any) -> None:
    status, reply = demo.deliver(**case())
    assert status == 400 and reply["error"], reply
    view = demo.call("GET", "/demo/webhooks")[1]
    assert (view["deliveries"], view["received"], view["refused"]) == ([], 0, 1)

