"""The provider simulator, spoken to over real HTTP the way panel clients do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from providers.simulator import create_simulator_app
from providers.simulator_state import FIRST_ORDER_ID, PENDING_SECONDS, RUNNING_SECONDS

KEY = "sim-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sim:
    """A running simulator plus a session to talk to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.api_url = str(server.make_url("/api/v2"))

    async def api(self, **fields: Any) -> Any:
        fields.setdefault("key", KEY)
        async with self.session.post(self.api_url, data=fields) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            return orjson.loads(await resp.read())

    async def raw_api(self, **fields: Any) -> bytes:
        fields.setdefault("key", KEY)
        async with self.session.post(self.api_url, data=fields) as resp:
            assert resp.status == 200
            return await resp.read()

    async def control(self, path: str, body: Any = None, *, expect: int = 200) -> Any:
        url = self.server.make_url(path)
        if body is None:
            request = self.session.get(url)
        else:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            request = self.session.post(url, data=data)
        async with request as resp:
            assert resp.status == expect, await resp.text()
            return orjson.loads(await resp.read())


@contextlib.asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[Sim]:
    options.setdefault("auto_advance", False)
    server = TestServer(create_simulator_app(KEY, **options), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Sim(server, session)
    finally:
        await server.close()


def run(test: Callable[[Sim], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with simulator(**options) as sim:
            await test(sim)

    asyncio.run(main())


def test_wrong_or_missing_key_and_unknown_action() -> None:
    async def check(sim: Sim) -> None:
        assert await sim.api(key="nope", action="balance") == {"error": "Invalid API key"}
        async with sim.session.post(sim.api_url, data={"action": "balance"}) as resp:
            assert resp.status == 200
            assert orjson.loads(await resp.read()) == {"error": "Invalid API key"}
        assert await sim.api(action="fly") == {"error": "Incorrect request"}
        assert await sim.api() == {"error": "Incorrect request"}
        assert (await sim.control("/sim/stats"))["invalid_key"] == 2

    run(check)


def test_services_have_perfect_panel_types() -> None:
    async def check(sim: Sim) -> None:
        services = await sim.api(action="services")
        assert services
        for service in services:
            assert isinstance(service["service"], int)
            assert all(isinstance(service[k], str) for k in ("rate", "min", "max", "name"))
            assert all(isinstance(service[k], bool) for k in ("refill", "cancel"))

    run(check)


def test_add_validates_and_numbers_orders_upwards() -> None:
    async def check(sim: Sim) -> None:
        add = {"action": "add", "link": "https://instagram.com/x"}
        assert await sim.api(**add, service=99, quantity=100) == {"error": "Incorrect service ID"}
        assert await sim.api(**add, service=1, quantity=10) == {
            "error": "Quantity less than minimal 50"
        }
        assert await sim.api(**add, service=1, quantity=10**7) == {
            "error": "Quantity more than maximal 100000"
        }
        assert await sim.api(action="add", service=1, quantity=100) == {"error": "Bad link"}
        first = await sim.api(**add, service=1, quantity=1000)
        second = await sim.api(**add, service=2, quantity=100, runs=2, interval=10)
        assert first == {"order": FIRST_ORDER_ID}
        assert second == {"order": FIRST_ORDER_ID + 1}
        await sim.control(f"/sim/orders/{FIRST_ORDER_ID + 5}", {})
        third = await sim.api(**add, service=1, quantity=50)
        assert third == {"order": FIRST_ORDER_ID + 6}
        balance = await sim.api(action="balance")
        assert balance == {"balance": "999999.04300", "currency": "USD"}
        await sim.control("/sim/balance", {"balance": "0.5"})
        assert await sim.api(**add, service=1, quantity=1000) == {
            "error": "Not enough funds on balance"
        }

    run(check)


def test_single_and_multi_status_shapes() -> None:
    async def check(sim: Sim) -> None:
        order = (await sim.api(action="add", service=1, link="l", quantity=1000))["order"]
        single = await sim.api(action="status", order=order)
        assert single == {"charge": "0.90000", "start_count": single["start_count"],
                          "status": "Pending", "remains": "1000", "currency": "USD"}
        assert all(isinstance(value, str) for value in single.values())
        multi = await sim.api(action="status", orders=f"{order}, 77,{order},,")
        assert multi == {str(order): single, "77": {"error": "Incorrect order ID"}}
        assert await sim.api(action="status", order=77) == {"error": "Incorrect order ID"}

    run(check)


def test_more_than_100_ids_is_an_incorrect_request() -> None:
    async def check(sim: Sim) -> None:
        ids = ",".join(str(i) for i in range(1, 102))
        assert await sim.api(action="status", orders=ids) == {"error": "Incorrect request"}
        ok = await sim.api(action="status", orders=",".join(str(i) for i in range(1, 101)))
        assert len(ok) == 100
        stats = await sim.control("/sim/stats")
        assert stats["status_requests"] == 2
        assert stats["orders_queried"] == 201
        assert stats["max_ids_per_request"] == 101

    run(check)


def test_control_sets_status_and_remains_verbatim() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/500", {"status": "Canceled", "remains": 700})
        await sim.control("/sim/orders/501", {"status": "cancelled", "remains": "Unknown"})
        await sim.control("/sim/orders/502", {"status": "Partial", "remains": -5})
        await sim.control("/sim/orders/503", {"status": "Fail", "remains": None})
        await sim.control("/sim/orders/504", {"quantity": 300})
        reply = await sim.api(action="status", orders="500,501,502,503,504")
        assert reply["500"]["status"] == "Canceled"
        assert reply["500"]["remains"] == "700"
        assert reply["501"]["status"] == "cancelled"
        assert reply["501"]["remains"] == "Unknown"
        assert reply["502"]["remains"] == "-5"
        assert reply["503"]["remains"] is None
        assert reply["504"]["status"] == "Pending"
        assert reply["504"]["remains"] == "300"
        view = await sim.control("/sim/orders/500")
        assert view["status"] == "Canceled"
        assert view["frozen"] is True
        await sim.control("/sim/orders/404", expect=404)

    run(check)


def test_control_entry_is_served_verbatim_until_a_status_is_set() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/600", {"entry": "Incorrect order ID"})
        await sim.control("/sim/orders/601", {"entry": {"charge": "1.00"}})
        await sim.control("/sim/orders/602", {"entry": None})
        multi = await sim.api(action="status", orders="600,601,602")
        assert multi == {"600": "Incorrect order ID", "601": {"charge": "1.00"}, "602": None}
        assert await sim.api(action="status", order=601) == {"charge": "1.00"}
        await sim.control("/sim/orders/600", {"status": "Completed", "remains": 0})
        single = await sim.api(action="status", order=600)
        assert (single["status"], single["remains"]) == ("Completed", "0")

    run(check)


def test_reply_faults_omit_add_and_repeat_ids_until_cleared() -> None:
    async def check(sim: Sim) -> None:
        for order_id in (700, 701, 702, 703):
            await sim.control(f"/sim/orders/{order_id}", {"status": "In progress", "remains": 9})
        await sim.control("/sim/orders/700", {"reply": "omit"})
        await sim.control("/sim/orders/701", {"reply": "extra"})
        await sim.control("/sim/orders/702", {"reply": "repeat", "status": "Partial",
                                              "remains": 4})
        raw = await sim.raw_api(action="status", orders="700,701,702")
        assert raw.count(b'"702":') == 2  # the key written twice, as broken PHP panels do
        reply = orjson.loads(raw)
        assert "700" not in reply
        assert reply["702"]["status"] == "Partial"
        extras = set(reply) - {"701", "702"}
        assert len(extras) == 2 and "703" in extras  # one unknown id, one known order
        assert all(reply[i]["status"] == "Canceled" for i in extras)
        single = await sim.api(action="status", order=700)  # single-status replies unaffected
        assert single["status"] == "In progress"
        assert (await sim.control("/sim/orders/701"))["reply"] == "extra"
        faults = (await sim.control("/sim/stats"))["faults"]
        assert faults == {"reply_omit": 1, "reply_extra": 1, "reply_repeat": 1}
        for order_id in (700, 701, 702):
            await sim.control(f"/sim/orders/{order_id}", {"reply": None})
        assert set(await sim.api(action="status", orders="700,701,702")) == {
            "700", "701", "702"}
        assert "reply" not in await sim.control("/sim/orders/701")

    run(check)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", {"colour": "red"}, {"status": 5}, {"quantity": 0},
     {"quantity": "10"}, {"entry": 1, "status": "Completed"}, {"reply": "drop"},
     {"reply": 1}],
)
def test_bad_control_bodies_are_400(body: Any) -> None:
    async def check(sim: Sim) -> None:
        reply = await sim.control("/sim/orders/1", body, expect=400)
        assert "error" in reply

    run(check)


@pytest.mark.parametrize(
    "body",
    [b"{", {"latency": 1}, {"error_rate": 2}, {"error_rate": -1}, {"html_rate": "x"},
     {"rate_limit_per_min": 1.5}, {"timeout_rate": True}],
)
def test_bad_fault_bodies_are_400(body: Any) -> None:
    async def check(sim: Sim) -> None:
        assert "error" in await sim.control("/sim/faults", body, expect=400)

    run(check)


def test_faults_update_partially() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/faults", {"latency_ms": 20, "error_rate": 0.5})
        faults = await sim.control("/sim/faults", {"error_rate": 0})
        assert faults == {"latency_ms": 20.0, "error_rate": 0.0, "html_rate": 0.0,
                          "timeout_rate": 0.0, "rate_limit_per_min": 0}
        started = time.perf_counter()
        await sim.api(action="balance")
        assert time.perf_counter() - started >= 0.02

    run(check)


def test_error_and_html_faults() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/faults", {"error_rate": 1.0})
        for _ in range(6):
            async with sim.session.post(sim.api_url, data={"key": KEY, "action": "balance"}) as r:
                assert r.status in (500, 502)
                assert not (await r.text()).startswith("{")
        await sim.control("/sim/faults", {"error_rate": 0, "html_rate": 1.0})
        async with sim.session.post(sim.api_url, data={"key": KEY, "action": "balance"}) as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            assert "Cloudflare" in await r.text()
        stats = await sim.control("/sim/stats")
        assert stats["faults"] == {"error": 6, "html": 1}

    run(check)


def test_rate_limit_answers_429_with_retry_after() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/faults", {"rate_limit_per_min": 2})
        assert "balance" in await sim.api(action="balance")
        assert "balance" in await sim.api(action="balance")
        async with sim.session.post(sim.api_url, data={"key": KEY, "action": "balance"}) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 60

    run(check)


def test_timeout_fault_stalls_and_shutdown_is_prompt() -> None:
    async def main() -> None:
        started = time.perf_counter()
        async with simulator() as sim:
            await sim.control("/sim/faults", {"timeout_rate": 1.0})
            timeout = aiohttp.ClientTimeout(total=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await sim.session.post(sim.api_url, data={"key": KEY}, timeout=timeout)
        assert time.perf_counter() - started < 5

    asyncio.run(main())


def test_get_query_string_and_json_body_clients() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/700", {"status": "Partial", "remains": 157})
        query = {"key": KEY, "action": "status", "orders": "700,701"}
        async with sim.session.get(sim.api_url, params=query) as resp:
            by_get = orjson.loads(await resp.read())
        assert by_get["700"]["remains"] == "157"
        assert by_get["701"] == {"error": "Incorrect order ID"}
        payload = {"key": KEY, "action": "status", "orders": [700, 701]}
        async with sim.session.post(sim.api_url, json=payload) as resp:
            assert orjson.loads(await resp.read()) == by_get
        add = {"key": KEY, "action": "add", "service": 1, "link": "x", "quantity": 100}
        async with sim.session.post(sim.api_url, json=add) as resp:
            assert orjson.loads(await resp.read()) == {"order": FIRST_ORDER_ID}

    run(check)


def test_cancel_refill_and_refill_status_shapes() -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/800", {})
        await sim.control("/sim/orders/801", {"status": "Completed", "remains": 0})
        assert await sim.api(action="cancel", orders="800,801,9") == [
            {"order": 800, "cancel": 1},
            {"order": 801, "cancel": {"error": "Order can't be canceled"}},
            {"order": 9, "cancel": {"error": "Incorrect order ID"}},
        ]
        assert (await sim.api(action="status", order=800))["status"] == "Canceled"
        assert await sim.api(action="refill", order=801) == {"refill": "1"}
        assert await sim.api(action="refill", orders="801,9") == [
            {"order": 801, "refill": 2},
            {"order": 9, "refill": {"error": "Incorrect order ID"}},
        ]
        assert await sim.api(action="refill_status", refill=1) == {"status": "Completed"}
        assert await sim.api(action="refill_status", refills="2,3") == [
            {"refill": 2, "status": "Completed"},
            {"refill": 3, "status": {"error": "Refill not found"}},
        ]

    run(check)


def test_stats_count_and_reset() -> None:
    async def check(sim: Sim) -> None:
        await sim.api(action="status", orders="1,2,3")
        await sim.api(action="status", order="1")
        stats = await sim.control("/sim/stats")
        assert (stats["requests"], stats["status_requests"], stats["orders_queried"]) == (2, 2, 4)
        reset = await sim.control("/sim/stats/reset", {})
        assert (reset["requests"], reset["status_requests"], reset["orders_queried"]) == (0, 0, 0)

    run(check)


def _walk(seed: int) -> list[tuple[str, str]]:
    """Statuses of 40 orders at three instants of a fake clock."""
    clock = FakeClock()
    seen: list[tuple[str, str]] = []

    async def check(sim: Sim) -> None:
        ids = [
            str((await sim.api(action="add", service=1, link="l", quantity=1000))["order"])
            for _ in range(40)
        ]
        late = PENDING_SECONDS[1] + RUNNING_SECONDS[1] + 0.01
        for offset in (0.0, PENDING_SECONDS[1] + 0.01, late):
            clock.now = 1000.0 + offset
            reply = await sim.api(action="status", orders=",".join(ids))
            seen.extend((reply[i]["status"], reply[i]["remains"]) for i in ids)

    run(check, seed=seed, auto_advance=True, clock=clock)
    return seen


def test_lifecycle_follows_a_seeded_schedule() -> None:
    walk = _walk(seed=7)
    assert walk == _walk(seed=7)
    assert walk != _walk(seed=8)
    start, middle, end = walk[:40], walk[40:80], walk[80:]
    assert set(start) == {("Pending", "1000")}
    assert {status for status, _ in middle} <= {"In progress", "Processing"}
    assert {status for status, _ in end} == {"Completed", "Partial", "Canceled"}
    for status, remains in end:
        expected = {"Completed": "0", "Canceled": "1000"}.get(status)
        if expected is not None:
            assert remains == expected
        else:
            assert 0 < int(remains) < 1000


def test_auto_advance_false_keeps_orders_pending() -> None:
    clock = FakeClock()

    async def check(sim: Sim) -> None:
        order = (await sim.api(action="add", service=1, link="l", quantity=100))["order"]
        clock.now += 3600
        assert (await sim.api(action="status", order=order))["status"] == "Pending"

    run(check, clock=clock)


def test_a_schedule_moves_an_order_slowly_in_steps_to_its_end() -> None:
    clock = FakeClock()

    async def check(sim: Sim) -> None:
        order = (await sim.api(action="add", service=1, link="l", quantity=1000))["order"]
        await sim.control(f"/sim/orders/{order}", {"status": "In progress", "remains": 5})
        clock.now += 100  # the schedule counts from when it is set, not from the order's add
        view = await sim.control(f"/sim/orders/{order}", {"schedule": {
            "pending": 30, "running": 100, "ends": "Partial", "remains": 300}})
        assert view["frozen"] is False  # the schedule replaced the frozen status
        assert view["schedule"] == {"pending": 30.0, "running": 100.0, "ends": "Partial",
                                    "remains": 300}
        seen = []
        for at in (0, 29.9, 30, 39.9, 40, 75, 129.9, 130, 10_000):
            clock.now = 1100.0 + at
            reply = await sim.api(action="status", order=order)
            seen.append((reply["status"], reply["remains"]))
        assert seen == [
            ("Pending", "1000"), ("Pending", "1000"), ("In progress", "1000"),
            ("In progress", "1000"), ("In progress", "930"), ("In progress", "720"),
            ("In progress", "370"), ("Partial", "300"), ("Partial", "300")]
        # a status set now freezes it again
        await sim.control(f"/sim/orders/{order}", {"status": "Canceled", "remains": 1000})
        assert (await sim.api(action="status", order=order))["status"] == "Canceled"

    run(check, clock=clock)  # auto_advance=False: a schedule moves the order all the same


@pytest.mark.parametrize(("ends", "remains"), [("Completed", "0"), ("Canceled", "400"),
                                               ("Partial", "200")])
def test_a_schedule_ends_with_the_remains_its_end_implies(ends: str, remains: str) -> None:
    clock = FakeClock()

    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/900", {"quantity": 400, "schedule": {"ends": ends}})
        clock.now += 1
        reply = await sim.api(action="status", order=900)
        assert (reply["status"], reply["remains"]) == (ends, remains)

    run(check, clock=clock)


@pytest.mark.parametrize("schedule", [
    None, [], {"ends": "Done"}, {"ends": "Completed", "pending": -1},
    {"ends": "Completed", "running": "10"}, {"ends": "Completed", "running": True},
    {"ends": "Completed", "pending": 10**9}, {"ends": "Partial", "remains": 1001},
    {"ends": "Partial", "remains": 1.5}, {"ends": "Completed", "speed": 2},
])
def test_bad_schedules_are_400_and_change_nothing(schedule: Any) -> None:
    async def check(sim: Sim) -> None:
        await sim.control("/sim/orders/901", {"quantity": 1000})
        reply = await sim.control("/sim/orders/901", {"quantity": 5, "schedule": schedule},
                                  expect=400)
        assert "schedule" in reply["error"]
        view = await sim.control("/sim/orders/901")
        assert view["quantity"] == 1000 and "schedule" not in view

    run(check)


def test_a_schedule_with_a_status_is_400() -> None:
    async def check(sim: Sim) -> None:
        reply = await sim.control("/sim/orders/902", {"status": "Completed",
                                                      "schedule": {"ends": "Completed"}},
                                  expect=400)
        assert "combined" in reply["error"]

    run(check)
