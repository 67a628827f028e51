"""ProviderClient over real HTTP: against the simulator, and against scripted bad servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from providers.client import ProviderClient, ProviderConfig, ProviderUnavailable
from providers.replies import EntryError, ProviderErrorReply, StatusEntry
from providers.simulator import create_simulator_app

KEY = "client-key"
PROVIDER = "sim"
FAST = {"attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 2.0}
CLOUDFLARE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"


class Scripted:
    """A tiny server answering with scripted replies; the last one repeats."""

    def __init__(self, *replies: Reply | Callable[[dict[str, str]], Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, str]] = []
        self.content_types: list[str] = []
        self.active = 0
        self.max_active = 0

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.requests.append(form)
        self.content_types.append(request.content_type)
        script = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        reply = script(form) if callable(script) else script
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(reply.delay)
        finally:
            self.active -= 1
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                            content_type=reply.content_type)


@dataclass
class Harness:
    client: ProviderClient
    metrics: Metrics
    session: aiohttp.ClientSession
    base: str

    async def control(self, path: str, body: Any = None) -> Any:
        if body is None:
            request = self.session.get(self.base + path)
        else:
            request = self.session.post(self.base + path, data=orjson.dumps(body))
        async with request as resp:
            assert resp.status == 200, await resp.text()
            return orjson.loads(await resp.read())

    def requests(self, action: str, outcome: str) -> float:
        labels = {"provider": PROVIDER, "action": action, "outcome": outcome}
        value = self.metrics.registry.get_sample_value("paxyo_provider_requests_total", labels)
        return value or 0.0

    def bad_entries(self, reason: str) -> float:
        labels = {"provider": PROVIDER, "reason": reason}
        value = self.metrics.registry.get_sample_value("paxyo_provider_bad_entries_total", labels)
        return value or 0.0


@contextlib.asynccontextmanager
async def harness(app: web.Application, key: str = KEY, **options: Any) -> AsyncIterator[Harness]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    metrics = Metrics(CollectorRegistry())
    try:
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(PROVIDER, str(server.make_url("/api/v2")), key)
            client = ProviderClient(config, session, metrics=metrics, **{**FAST, **options})
            yield Harness(client, metrics, session, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


def with_simulator(test: Callable[[Harness], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with harness(create_simulator_app(KEY, auto_advance=False), **options) as h:
            await test(h)

    asyncio.run(main())


def with_scripted(
    scripted: Scripted, test: Callable[[Harness], Awaitable[None]], **options: Any
) -> None:
    app = web.Application()
    app.router.add_post("/api/v2", scripted.handle)

    async def main() -> None:
        async with harness(app, **options) as h:
            await test(h)

    asyncio.run(main())


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=orjson.dumps(value))


def test_status_many_reads_every_variant_from_the_simulator() -> None:
    async def check(h: Harness) -> None:
        await h.control("/sim/orders/1", {"status": "Partial", "remains": 157})
        await h.control("/sim/orders/2", {"status": "In progress", "remains": -5})
        await h.control("/sim/orders/3", {"status": "cancelled", "remains": 5000})
        await h.control("/sim/orders/4", {"status": "Pending", "remains": "Unknown"})
        await h.control("/sim/orders/5", {"entry": "Incorrect order ID"})
        await h.control("/sim/orders/6", {"entry": {"error": "Order is being processed"}})
        await h.control("/sim/orders/7", {"entry": {"charge": "1.0", "remains": "3"}})
        await h.control("/sim/orders/8", {"entry": 42})
        await h.control("/sim/orders/10", {"entry": {"status": "Fail", "remains": 0}})
        result = await h.client.status_many(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"])
        assert result["1"] == StatusEntry("Partial", 157, "0.75870", "USD")
        assert result["2"].remains == -5
        assert (result["3"].status, result["3"].remains) == ("cancelled", 5000)
        assert (result["4"].status, result["4"].remains) == ("Pending", None)
        assert result["5"] == EntryError("Incorrect order ID")
        assert result["6"] == EntryError("Order is being processed")
        assert result["7"].kind == result["8"].kind == "bad_entry"
        assert result["9"] == EntryError("Incorrect order ID")
        assert result["10"] == StatusEntry("Fail", 0, None, None)
        assert h.bad_entries("entry_error") == 3
        assert h.bad_entries("bad_entry") == 2
        assert h.bad_entries("bad_remains") == 1
        assert h.requests("status", "ok") == 1

    with_simulator(check)


def test_ids_missing_from_the_reply_are_missing_from_the_result() -> None:
    scripted = Scripted(json_reply({"1": {"status": "Completed", "remains": "0"}, "99": {}}))

    async def check(h: Harness) -> None:
        assert await h.client.status_many(["1", "2"]) == {
            "1": StatusEntry("Completed", 0, None, None)
        }
        assert await h.client.status_many([]) == {}
        assert len(scripted.requests) == 1

    with_scripted(scripted, check)


def test_requests_are_form_posts_with_key_and_action() -> None:
    scripted = Scripted(json_reply({}))

    async def check(h: Harness) -> None:
        await h.client.status_many(["11", "12", "11"])
        assert scripted.requests == [{"key": KEY, "action": "status", "orders": "11,12"}]
        assert scripted.content_types == ["application/x-www-form-urlencoded"]

    with_scripted(scripted, check)


def test_more_than_100_ids_go_in_chunks_of_at_most_100() -> None:
    async def check(h: Harness) -> None:
        ids = [str(i) for i in range(1, 251)]
        result = await h.client.status_many(ids)
        assert set(result) == set(ids)
        stats = await h.control("/sim/stats")
        assert stats["status_requests"] == 3
        assert stats["orders_queried"] == 250
        assert stats["max_ids_per_request"] == 100

    with_simulator(check)


def test_chunks_run_with_bounded_concurrency() -> None:
    def echo(form: dict[str, str]) -> Reply:
        ids = form["orders"].split(",")
        return Reply(body=orjson.dumps({i: {"status": "Pending"} for i in ids}), delay=0.05)

    scripted = Scripted(echo)

    async def check(h: Harness) -> None:
        result = await h.client.status_many([str(i) for i in range(50)])
        assert len(result) == 50
        assert len(scripted.requests) == 5
        assert scripted.max_active == 2

    with_scripted(scripted, check, chunk_size=10, chunk_concurrency=2)


def test_a_failed_chunk_raises_with_the_others_as_partial() -> None:
    def by_chunk(form: dict[str, str]) -> Reply:
        ids = form["orders"].split(",")
        if "5" in ids:
            return Reply(status=503, body=b"busy", content_type="text/plain")
        return Reply(body=orjson.dumps({i: {"status": "Pending"} for i in ids}))

    async def check(h: Harness) -> None:
        with pytest.raises(ProviderUnavailable) as raised:
            await h.client.status_many([str(i) for i in range(20)])
        assert set(raised.value.partial) == {str(i) for i in range(10, 20)}

    with_scripted(Scripted(by_chunk), check, chunk_size=10)


def test_wrong_key_is_a_provider_error_reply_and_not_retried() -> None:
    async def check(h: Harness) -> None:
        with pytest.raises(ProviderErrorReply) as raised:
            await h.client.status_many(["1"])
        assert raised.value.message == "Invalid API key"
        with pytest.raises(ProviderErrorReply):
            await h.client.balance()
        stats = await h.control("/sim/stats")
        assert stats["requests"] == 2
        assert h.requests("status", "error_reply") == 1

    async def main() -> None:
        async with harness(create_simulator_app(KEY), key="wrong") as h:
            await check(h)

    asyncio.run(main())


def test_json_error_with_4xx_status_is_read() -> None:
    scripted = Scripted(json_reply({"error": "Incorrect request"}, status=422))

    async def check(h: Harness) -> None:
        with pytest.raises(ProviderErrorReply, match="Incorrect request"):
            await h.client.status_many(["1"])
        assert len(scripted.requests) == 1

    with_scripted(scripted, check)


GOOD = json_reply({"1": {"status": "In progress", "remains": "10"}})


@pytest.mark.parametrize(
    ("first", "outcome"),
    [
        (Reply(500, b"Internal Server Error", content_type="text/plain"), "http_5xx"),
        (Reply(502, b"<html>502 Bad Gateway</html>", content_type="text/html"), "http_5xx"),
        (Reply(200, CLOUDFLARE, content_type="text/html"), "bad_reply"),
        (Reply(200, b""), "bad_reply"),
        (Reply(200, b"Warning: mysql_connect(): Too many connections"), "bad_reply"),
        (Reply(403, CLOUDFLARE, content_type="text/html"), "bad_reply"),
        (Reply(429, b"slow down", {"Retry-After": "0"}, content_type="text/plain"),
         "rate_limited"),
    ],
)
def test_transient_failure_then_success_is_retried(first: Reply, outcome: str) -> None:
    scripted = Scripted(first, GOOD)

    async def check(h: Harness) -> None:
        assert await h.client.status_many(["1"]) == {
            "1": StatusEntry("In progress", 10, None, None)
        }
        assert len(scripted.requests) == 2
        assert h.requests("status", outcome) == 1
        assert h.requests("status", "ok") == 1

    with_scripted(scripted, check)


def test_exhausted_retries_raise_provider_unavailable_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = CLOUDFLARE + b"x" * 500
    scripted = Scripted(Reply(200, page, content_type="text/html"))

    async def check(h: Harness) -> None:
        with pytest.raises(ProviderUnavailable, match="bad_reply"):
            await h.client.status_many(["1"])
        assert len(scripted.requests) == 3
        assert h.requests("status", "bad_reply") == 3

    with caplog.at_level(logging.WARNING, logger="paxyo.providers"):
        with_scripted(scripted, check)
    lines = [r.getMessage() for r in caplog.records if r.name == "paxyo.providers"]
    assert len(lines) == 3  # two retries, one give-up
    assert all(PROVIDER in line and "Just a moment" in line for line in lines)
    assert all(page[:201].decode() not in line for line in lines)
    assert "retrying" in lines[0] and "failed after 3 attempt" in lines[2]


def test_retry_after_is_honoured_up_to_backoff_max() -> None:
    slow = Scripted(Reply(429, b"", {"Retry-After": "0.3"}), GOOD)
    capped = Scripted(Reply(429, b"", {"Retry-After": "30"}), GOOD)

    async def waits_retry_after(h: Harness) -> None:
        started = time.perf_counter()
        await h.client.status_many(["1"])
        assert time.perf_counter() - started >= 0.3

    async def waits_at_most_backoff_max(h: Harness) -> None:
        started = time.perf_counter()
        await h.client.status_many(["1"])
        assert time.perf_counter() - started < 2

    with_scripted(slow, waits_retry_after, backoff_max=1.0)
    with_scripted(capped, waits_at_most_backoff_max, backoff_max=0.2)


def test_timeouts_are_retried_then_unavailable() -> None:
    scripted = Scripted(Reply(delay=0.5))

    async def check(h: Harness) -> None:
        with pytest.raises(ProviderUnavailable, match="timeout"):
            await h.client.status_many(["1"])
        assert len(scripted.requests) == 2
        assert h.requests("status", "timeout") == 2

    with_scripted(scripted, check, timeout=0.1, attempts=2)


def test_network_errors_are_retried_then_unavailable() -> None:
    async def main() -> None:
        metrics = Metrics(CollectorRegistry())
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(PROVIDER, "http://127.0.0.1:9/api/v2", KEY)
            client = ProviderClient(config, session, metrics=metrics, **FAST)
            with pytest.raises(ProviderUnavailable, match="network"):
                await client.balance()
        labels = {"provider": PROVIDER, "action": "balance", "outcome": "network"}
        assert metrics.registry.get_sample_value("paxyo_provider_requests_total", labels) == 3

    asyncio.run(main())


def test_simulator_timeout_fault_makes_the_provider_unavailable() -> None:
    async def check(h: Harness) -> None:
        await h.control("/sim/faults", {"timeout_rate": 1.0})
        with pytest.raises(ProviderUnavailable):
            await h.client.status_many(["1"])
        assert (await h.control("/sim/stats"))["actions"] == {"status": 2}

    with_simulator(check, timeout=0.2, attempts=2)


@pytest.mark.parametrize(
    "fault", [{"error_rate": 1.0}, {"html_rate": 1.0}, {"timeout_rate": 1.0}]
)
def test_add_is_never_retried(fault: dict[str, float]) -> None:
    async def check(h: Harness) -> None:
        await h.control("/sim/faults", fault)
        with pytest.raises(ProviderUnavailable, match="outcome is unknown"):
            await h.client.add(1, "https://instagram.com/x", 1000)
        assert (await h.control("/sim/stats"))["actions"] == {"add": 1}

    with_simulator(check, timeout=0.3)


def test_add_places_an_order_and_reports_refusals() -> None:
    async def check(h: Harness) -> None:
        order_id = await h.client.add(1, "https://instagram.com/x", 1000, runs=None)
        assert order_id == "1000"
        status = await h.client.status(order_id)
        assert (status.status, status.remains) == ("Pending", 1000)
        with pytest.raises(ProviderErrorReply, match="Incorrect service ID"):
            await h.client.add(42, "https://instagram.com/x", 1000)
        with pytest.raises(ProviderErrorReply, match="Quantity less than minimal 50"):
            await h.client.add(1, "https://instagram.com/x", 5)
        assert (await h.control("/sim/stats"))["actions"] == {"add": 3, "status": 1}
        assert h.requests("add", "ok") == 1
        assert h.requests("add", "error_reply") == 2

    with_simulator(check)


def test_single_status_balance_services_and_cancel() -> None:
    async def check(h: Harness) -> None:
        await h.control("/sim/orders/300", {"status": "Partial", "remains": "157"})
        await h.control("/sim/orders/301", {})
        assert await h.client.status("300") == StatusEntry("Partial", 157, "0.90000", "USD")
        with pytest.raises(ProviderErrorReply, match="Incorrect order ID"):
            await h.client.status("999")
        balance, currency = await h.client.balance()
        assert isinstance(balance, Decimal)
        assert currency == "USD"
        services = await h.client.services()
        assert {s["service"] for s in services} >= {1}
        assert await h.client.cancel(["301", "999"]) == {"301": True, "999": "Incorrect order ID"}
        assert (await h.client.status("301")).status == "Canceled"

    with_simulator(check)


def test_cancellation_passes_through_without_retry() -> None:
    scripted = Scripted(Reply(delay=0.3))

    async def check(h: Harness) -> None:
        task = asyncio.create_task(h.client.status_many(["1"]))
        async with asyncio.timeout(5):
            while not scripted.active:  # the request reached the provider
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # time for a retry that must not come
        assert len(scripted.requests) == 1

    with_scripted(scripted, check)


def test_config_repr_hides_the_key() -> None:
    config = ProviderConfig("godofpanel", "https://godofpanel.com/api/v2", "secret-key")
    assert "secret-key" not in repr(config)
    with pytest.raises(ValueError):
        ProviderClient(config, None, chunk_size=101)  # type: ignore[arg-type]
