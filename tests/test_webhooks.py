"""Webhook delivery: signed, at least once, in order per user, from the queue in the database.

A real receiver (an aiohttp server) answers as each test scripts it; the sender runs as in
production, in-process (short timeouts and backoff) or as the ``paxyo webhooks run`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web

from monitoring.metrics import process_metrics
from paxyo import webhook_queue
from paxyo.accounts import deposit
from paxyo.cli.main import main as paxyo_main
from paxyo.clock import utcnow
from paxyo.events import BALANCE_UPDATED, event_id, record_event
from paxyo.settings import Settings, SettingsError
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade
from paxyo.store.schema import webhook_deliveries
from paxyo.webhook_signature import verify
from tests.conftest import make_database
from tests.support import ServerThread, free_port
from webhooks.sender import SenderConfig, WebhookSender

SECRET = "whsec-test-secret"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Receiver:
    """Answers each POST with the next scripted reply (an HTTP status, or "hang" for a time)."""

    script: list[int | str] = field(default_factory=list)
    script_user: int | None = None  # the script answers only this user's requests
    hang_seconds: float = 3.0
    slow_seconds: float = 1.0  # "slow": a 200 after this long (within the sender's timeout)
    requests: list[tuple[str, dict]] = field(default_factory=list)  # (event id, event)
    accepted: list[str] = field(default_factory=list)  # event ids answered 2xx
    bad_signatures: int = 0
    in_flight: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # per user
    max_in_flight_per_user: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get("Paxyo-Signature", ""), now=time.time()):
            self.bad_signatures += 1
            return web.Response(status=400)
        event = orjson.loads(body)
        assert request.headers["Paxyo-Event-Id"] == event["id"]
        user = event["user_id"]
        with self.lock:
            self.requests.append((event["id"], event))
            scripted = self.script and self.script_user in (None, user)
            reply = self.script.pop(0) if scripted else 200
            self.in_flight[user] += 1
            self.max_in_flight_per_user = max(self.max_in_flight_per_user, self.in_flight[user])
        try:
            if reply == "hang":
                await asyncio.sleep(self.hang_seconds)
                return web.Response(status=200)  # too late: the sender gave up waiting
            if reply == "slow":
                await asyncio.sleep(self.slow_seconds)
                reply = 200
            elif reply == 200:
                await asyncio.sleep(0.01)  # long enough for a second sender to overlap
            if reply == 200:
                with self.lock:
                    self.accepted.append(event["id"])
            return web.Response(status=int(reply), text="ok")
        finally:
            with self.lock:
                self.in_flight[user] -= 1

    def accepted_of(self, user: int, *, distinct: bool = False) -> list[str]:
        """The user's accepted event ids in arrival order (``distinct``: first arrivals only,
        as a receiver that deduplicates by event id applies them)."""
        with self.lock:
            users = {eid: ev["user_id"] for eid, ev in self.requests}
            ids = [eid for eid in self.accepted if users[eid] == user]
        return list(dict.fromkeys(ids)) if distinct else ids


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def hook_db(request, tmp_path) -> Iterator[str]:
    for url in make_database(request.param, tmp_path):
        upgrade(url)
        yield url


@pytest.fixture
def hook_engine(hook_db: str) -> Iterator[sa.Engine]:
    engine = open_engine(hook_db)
    yield engine
    engine.dispose()


def make_events(engine: sa.Engine, users: dict[int, int], *, webhook: bool = True) -> \
        dict[int, list[str]]:
    """Deposits for each user (interleaved); the event ids per user in the order made."""
    made: dict[int, list[str]] = defaultdict(list)
    for n in range(max(users.values())):
        for user, count in users.items():
            if n < count:
                result = deposit(engine, user, Decimal("1.25"), f"dep-{user}-{n}", 2,
                                 webhook=webhook)
                assert result.event is not None
                made[user].append(result.event.id)
    return made


def fast_config(url: str, **overrides: float) -> SenderConfig:
    values = {"timeout": 0.5, "backoff_first": 0.05, "backoff_cap": 0.2, "poll_interval": 0.05,
              "lease_seconds": 5.0, **overrides}
    return SenderConfig(url=url, secret=SECRET, **values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def sending(*senders: WebhookSender) -> AsyncIterator[None]:
    """The senders run (on this loop) for the block; then they stop and are awaited."""
    tasks = [asyncio.create_task(s.run()) for s in senders]
    try:
        yield
    finally:
        for sender in senders:
            sender.stop()
        await asyncio.gather(*tasks)


def run_until(senders: list[WebhookSender], done, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Run the senders until ``done()`` holds (or fail after ``timeout`` seconds)."""

    async def scenario() -> None:
        async with sending(*senders):
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, "webhooks not delivered in time"
                await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_500_500_timeout_then_200_delivers_every_event_in_order_signed(
        hook_engine: sa.Engine) -> None:
    receiver = Receiver(script=[500, 500, "hang", 200], script_user=111, hang_seconds=1.5)
    with ServerThread(receiver.app) as server:
        made = make_events(hook_engine, {111: 4, 222: 3})
        metrics = process_metrics()
        sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook"), metrics)
        total = sum(len(ids) for ids in made.values())
        run_until([sender], lambda: len(receiver.accepted) >= total)
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids  # all, once each, in id order
    assert receiver.bad_signatures == 0
    first = receiver.requests[0][0]
    assert [eid for eid, _ in receiver.requests].count(first) == 4  # 500, 500, timeout, 200
    assert webhook_queue.read_status(hook_engine).pending == 0
    outcome = {s.labels["outcome"]: s.value for s in metrics.webhook_deliveries.collect()[0]
               .samples if s.name.endswith("_total")}
    assert outcome["delivered"] == 7 and outcome["http_error"] == 2 and outcome["timeout"] == 1


def test_a_receiver_that_was_down_gets_the_backlog_in_order(hook_engine: sa.Engine) -> None:
    port = free_port()
    made = make_events(hook_engine, {111: 5, 222: 5, 333: 2})
    receiver = Receiver()
    server = ServerThread(receiver.app, port=port)
    sender = WebhookSender(hook_engine, fast_config(f"http://127.0.0.1:{port}/hook"))

    async def scenario() -> None:
        async with sending(sender):
            await asyncio.sleep(1.0)  # connection refused, again and again
            status = await asyncio.to_thread(webhook_queue.read_status, hook_engine)
            assert status.pending == 12 and status.last_error is not None
            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 30
            while len(receiver.accepted) < 12:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids


def test_two_senders_share_the_work_one_event_in_flight_per_user(
        hook_engine: sa.Engine) -> None:
    receiver = Receiver()
    with ServerThread(receiver.app) as server:
        made = make_events(hook_engine, {u: 6 for u in range(1, 9)})
        senders = [WebhookSender(hook_engine, fast_config(f"{server.url}/hook",
                                                          concurrency=4))
                   for _ in range(2)]
        run_until(senders, lambda: len(receiver.accepted) >= 48)
    assert receiver.max_in_flight_per_user == 1
    assert len(receiver.requests) == 48  # every answer was 2xx: each event sent once
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids


def test_an_event_failing_past_max_age_is_marked_failed_then_retried(
        hook_engine: sa.Engine, hook_db: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    receiver = Receiver(script=[500] * 1000)
    with ServerThread(receiver.app) as server:
        made = make_events(hook_engine, {111: 2})
        first, second = made[111]
        sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook", max_age=0.3))
        run_until([sender], lambda: webhook_queue.read_status(hook_engine).failed == 2)
        assert {eid for eid, _ in receiver.requests} == {first, second}

        monkeypatch.setenv("DATABASE_URL", hook_db)
        monkeypatch.delenv("PAXYO_WEBHOOK_URL", raising=False)
        assert paxyo_main(["webhooks", "status"]) == 0
        out = capsys.readouterr().out
        assert "failed (given up; `paxyo webhooks retry --all`): 2" in out
        assert "last error: HTTP 500" in out
        assert paxyo_main(["webhooks", "retry", "--all"]) == 0
        assert "queued 2 event(s)" in capsys.readouterr().out

        receiver.script.clear()
        sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook"))
        run_until([sender], lambda: len(receiver.accepted) == 2)
        assert receiver.accepted == [first, second]
        # a delivered event sent again on request
        assert paxyo_main(["webhooks", "retry", first]) == 0
        sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook"))
        run_until([sender], lambda: len(receiver.accepted) == 3)
        assert receiver.accepted[-1] == first


def test_retry_refuses_unknown_and_malformed_ids(
        hook_engine: sa.Engine, hook_db: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    made = make_events(hook_engine, {111: 1})
    monkeypatch.setenv("DATABASE_URL", hook_db)
    assert paxyo_main(["webhooks", "retry", made[111][0], "999999"]) == 1
    assert "no such event: 999999; nothing queued" in capsys.readouterr().err
    many = [str(i) for i in range(10**6, 10**6 + 2000)]  # more than one IN (...) list holds
    assert paxyo_main(["webhooks", "retry", made[111][0], *many]) == 1
    assert capsys.readouterr().err.endswith(
        "no such event: 1000000, 1000001, 1000002, 1000003, 1000004, 1000005, 1000006, "
        "1000007, 1000008, 1000009 and 1990 more; nothing queued\n")
    for bad in ("1,2", "٣", "\x00", "-1", "1" * 30, "9" * 20):
        assert paxyo_main(["webhooks", "retry", bad]) == 2
        assert "not an event id" in capsys.readouterr().err
    assert paxyo_main(["webhooks", "retry"]) == 2
    assert webhook_queue.read_status(hook_engine).pending == 1  # nothing changed


def test_events_are_queued_only_with_webhooks_on(hook_engine: sa.Engine) -> None:
    make_events(hook_engine, {111: 2}, webhook=False)
    with hook_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                            ).scalar_one() == 0


def _sender_process(db: str, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": db, "PAXYO_WEBHOOK_URL": url,
           "PAXYO_WEBHOOK_SECRET": SECRET, "PAXYO_WEBHOOK_TIMEOUT": "1",
           "REDIS_URL": "redis://127.0.0.1:1/0"}  # no Redis: metrics only, deliveries go on
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "paxyo.cli", "webhooks", "run"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)


def test_killing_the_sender_mid_delivery_loses_nothing(hook_engine: sa.Engine, hook_db: str,
                                                       tmp_path: Path) -> None:
    receiver = Receiver(script=["hang"], hang_seconds=4)
    server = ServerThread(receiver.app)
    server.start()
    log = tmp_path / "sender.log"
    made = make_events(hook_engine, {111: 3, 222: 3})
    url = f"http://hookuser:url-password@127.0.0.1:{server.port}/hook"
    proc = _sender_process(hook_db, url, log)
    try:
        deadline = time.monotonic() + 30
        while not any(True for _ in receiver.requests):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        hung = receiver.requests[0][0]
        os.killpg(proc.pid, signal.SIGKILL)  # mid-delivery: the POST is in flight
        proc.wait()
        proc = _sender_process(hook_db, url, log)
        # the receiver counts an event before its 2xx reaches the sender, which then deletes
        # the row: wait for that too, or a SIGTERM in between leaves it to its lease
        while (len(set(receiver.accepted)) < 6
               or webhook_queue.read_status(hook_engine).pending):
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
    for user, ids in made.items():
        # at least once: an event whose 2xx came just before the kill may come again
        assert receiver.accepted_of(user, distinct=True) == ids
    assert hung in receiver.accepted
    assert webhook_queue.read_status(hook_engine).pending == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert "url-password" not in text and SECRET not in text
    assert "POST to http://hookuser:***@127.0.0.1:" in text


def test_the_sender_needs_a_url_and_a_secret(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAXYO_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("PAXYO_WEBHOOK_SECRET", raising=False)
    assert paxyo_main(["webhooks", "run"]) == 2
    assert "PAXYO_WEBHOOK_URL" in capsys.readouterr().err
    monkeypatch.setenv("PAXYO_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert paxyo_main(["webhooks", "run"]) == 2
    assert "PAXYO_WEBHOOK_SECRET: is required" in capsys.readouterr().err


def test_a_url_whose_host_cannot_be_encoded_is_refused_at_start_and_counted_as_attempts(
        hook_engine: sa.Engine) -> None:
    bad = "http://panel..example.com/hook"  # an empty label: IDNA encoding fails
    with pytest.raises(SettingsError, match="PAXYO_WEBHOOK_URL"):
        Settings.from_env({"DATABASE_URL": "sqlite://", "PAXYO_JWT_SECRET": "j",
                           "PAXYO_ADMIN_TOKEN": "a", "PAXYO_WEBHOOK_URL": bad,
                           "PAXYO_WEBHOOK_SECRET": SECRET})
    make_events(hook_engine, {111: 1})
    sender = WebhookSender(hook_engine, fast_config(bad))  # past the settings: still retried
    run_until([sender], lambda: webhook_queue.read_status(hook_engine).last_error is not None)
    assert webhook_queue.read_status(hook_engine).last_error == "UnicodeError: the URL was refused"


def test_status_reads_the_queue(hook_engine: sa.Engine) -> None:
    made = make_events(hook_engine, {111: 2})
    status = webhook_queue.read_status(hook_engine)
    assert status.pending == 2 and status.failed == 0 and status.last_error is None
    assert status.oldest_pending_at is not None
    assert (utcnow() - status.oldest_pending_at).total_seconds() < 60
    assert event_id(int(made[111][0])) == made[111][0]


def test_the_api_and_the_worker_queue_their_events_for_the_panel(settings, simulator) -> None:
    """Deposit and order over /v1, a Partial applied by a worker: the panel hears all three."""
    from dispatcher.planner import plan_shards
    from tests.support import http_json
    from workers.context import build_context
    from workers.jobs import run_shard
    from wsgateway.app import create_app

    receiver = Receiver()
    hook_server = ServerThread(receiver.app)
    hook_server.start()
    hooked = settings.with_overrides(webhook_url=f"{hook_server.url}/hook",
                                     webhook_secret=SECRET)
    gateway = ServerThread(lambda: create_app(hooked, process_metrics()))
    gateway.start()
    ctx = build_context(hooked, process_metrics())
    auth = {"Authorization": f"Bearer {hooked.admin_token}"}
    try:
        status, _ = http_json("POST", f"{gateway.url}/v1/accounts/111/deposits",
                              {"amount": "10.00", "reference": "pay-1"}, headers=auth)
        assert status == 201
        status, _ = http_json("POST", f"{gateway.url}/v1/orders", {
            "id": 5, "user_id": 111, "provider": "sim", "provider_order_id": "9005",
            "quantity": 1000, "charge": "10.00"}, headers=auth)
        assert status == 201
        simulator.set_order(9005, status="Partial", remains=300)
        [shard] = plan_shards(ctx.engine, now=utcnow() + timedelta(hours=1), poll_interval=30,
                              lease_seconds=60)
        assert run_shard(ctx, "sim", shard.order_ids, shard.token)["changed"] == 1
        sender = WebhookSender(ctx.engine, fast_config(f"{hook_server.url}/hook"))
        run_until([sender], lambda: len(receiver.accepted) == 3)
    finally:
        ctx.close()
        gateway.stop()
        hook_server.stop()
    events = [event for _, event in receiver.requests]
    assert [(e["type"], e.get("status"), e["balance"]) for e in events] == [
        ("balance.updated", None, "10.00"), ("order.updated", "Pending", "0.00"),
        ("order.updated", "Partial", "3.00")]
    assert events[2]["refund"] == "3.00" and events[2]["order_id"] == 5


def _wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_retry_while_an_event_is_in_flight_keeps_one_in_flight_per_user_in_order(
        hook_engine: sa.Engine) -> None:
    """`retry` of a delivered event and of the one in flight: neither goes out beside it."""
    receiver = Receiver(script=[200, "slow"], slow_seconds=1.0)
    server = ServerThread(receiver.app)
    server.start()
    made = make_events(hook_engine, {111: 3})
    first, second, third = made[111]
    sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook", timeout=5.0))

    async def scenario() -> None:
        async with sending(sender):
            await asyncio.to_thread(_wait_for, lambda: len(receiver.requests) == 2)  # second: slow
            queued = await asyncio.to_thread(webhook_queue.retry, hook_engine,
                                             [int(first), int(second)], utcnow())
            assert queued == 2
            await asyncio.to_thread(_wait_for, lambda: len(receiver.accepted) >= 4)
            await asyncio.sleep(0.3)  # nothing more comes

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert receiver.max_in_flight_per_user == 1
    # the second was in flight when retried: answered 2xx, it is not sent again; the first
    # (delivered already) goes again right after it, before the third
    assert receiver.accepted_of(111) == [first, second, first, third]
    assert webhook_queue.read_status(hook_engine).pending == 0


def test_a_claim_that_waited_for_a_locked_database_gets_a_whole_lease(tmp_path: Path) -> None:
    """The lease starts when the claim is written, not when the sender asked for it: a claim
    that waited for SQLite's write lock longer than a lease is not claimed again meanwhile."""
    path = tmp_path / "paxyo.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = open_engine(url)
    make_events(engine, {111: 1})
    receiver = Receiver(script=["slow"], slow_seconds=1.0)
    server = ServerThread(receiver.app)
    server.start()
    config = fast_config(f"{server.url}/hook", timeout=3.0, lease_seconds=2.5)
    first, second = WebhookSender(engine, config), WebhookSender(engine, config)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")

    async def scenario() -> None:
        a = asyncio.create_task(first.run())
        await asyncio.sleep(3.0)  # its claim waits for the lock, longer than a lease
        locker.execute("ROLLBACK")
        await asyncio.to_thread(_wait_for, lambda: len(receiver.requests) == 1)
        b = asyncio.create_task(second.run())  # while the first POST is in flight
        await asyncio.to_thread(_wait_for, lambda: len(receiver.accepted) == 1)
        await asyncio.sleep(0.3)
        first.stop()
        second.stop()
        await asyncio.gather(a, b)

    try:
        asyncio.run(scenario())
    finally:
        locker.close()
        server.stop()
        engine.dispose()
    assert receiver.max_in_flight_per_user == 1
    assert len(receiver.requests) == 1


class RawReceiver:
    """A TCP server that answers each request with the next scripted raw HTTP answer."""

    ANSWERS: dict[str, bytes] = {
        "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        # a 2xx status, then a body that never comes or never ends
        "status then silence": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        "endless body": b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n",
        "non-UTF-8 header": b"HTTP/1.1 200 \xff\r\nX-Bad: \xff\xfe\xc3(\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n",
        "100 then 204": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n"
                        b"Connection: close\r\n\r\n",
        "a cookie": b"HTTP/1.1 200 OK\r\nSet-Cookie: track=1; Path=/\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n",
        # not deliveries
        "garbage": b"\x00\x01 not\r\nHTTP\r\n\r\n",
        "redirect": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n",
        "headers forever": b"HTTP/1.1 200 OK\r\n",
        "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
    }

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.request_lines: list[bytes] = []
        self.headers: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._answer, "127.0.0.1", self.port), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.request_lines.append(head.split(b"\r\n")[0])
            self.headers.append(head)
            mode = self.script.pop(0) if self.script else "ok"
            writer.write(self.ANSWERS[mode])
            await writer.drain()
            if mode == "endless body":
                while True:
                    writer.write(b"x" * 65536)
                    await writer.drain()
            elif mode == "headers forever":
                while True:
                    writer.write(b"X-More: yes\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            elif mode != "ok" and mode != "garbage" and not mode.startswith(("non", "100")):
                await asyncio.sleep(3600)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


def test_hostile_receivers_a_2xx_status_delivers_whatever_follows(hook_engine: sa.Engine) -> None:
    answers = ["a cookie", "status then silence", "endless body", "non-UTF-8 header",
               "100 then 204"]
    receiver = RawReceiver(answers)
    receiver.start()
    try:
        make_events(hook_engine, {111: len(answers)})
        sender = WebhookSender(hook_engine, fast_config(  # a host name: cookies apply
            f"http://localhost:{receiver.port}/hook", timeout=1.0))
        run_until([sender], lambda: webhook_queue.read_status(hook_engine).pending == 0)
    finally:
        receiver.stop()
    assert len(receiver.request_lines) == len(answers)  # each delivered at its first POST
    assert not any(b"\r\nCookie:" in head for head in receiver.headers)  # none kept


def test_hostile_receivers_other_answers_are_retried_and_logged_on_one_line_without_secrets(
        hook_engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    answers = ["garbage", "redirect", "headers forever", "101"]
    receiver = RawReceiver(answers)
    receiver.start()
    url = f"http://hookuser:url-password@127.0.0.1:{receiver.port}/hook?token=url-token"
    try:
        made = make_events(hook_engine, {111: 2})
        sender = WebhookSender(hook_engine, fast_config(url, timeout=1.0))
        with caplog.at_level("WARNING", logger="paxyo.webhooks"):
            run_until([sender], lambda: webhook_queue.read_status(hook_engine).pending == 0)
    finally:
        receiver.stop()
    assert len(receiver.request_lines) == len(answers) + 2  # four failures, then both events
    assert set(receiver.request_lines) == {b"POST /hook?token=url-token HTTP/1.1"}  # no redirect
    assert all(b"\r\nAuthorization: Basic " in head for head in receiver.headers)
    attempts = [r.getMessage() for r in caplog.records if " attempt " in r.getMessage()]
    assert len(attempts) == len(answers)
    assert made[111][0] in attempts[0]
    for line in attempts:
        assert "\n" not in line and "url-password" not in line and "url-token" not in line
        assert SECRET not in line
    assert "HTTP 307" in attempts[1] and "HTTP 101" in attempts[3]
    assert f"no answer within {1.0:g}s" in attempts[2]


def test_status_shows_the_url_without_its_password_or_query(
        hook_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", hook_db)
    monkeypatch.setenv("PAXYO_WEBHOOK_URL", "https://panel:pa55word@example.com/hook?key=k3y")
    monkeypatch.setenv("PAXYO_WEBHOOK_SECRET", SECRET)
    assert paxyo_main(["webhooks", "status"]) == 0
    out = capsys.readouterr().out
    assert "webhook url: https://panel:***@example.com/hook?***" in out
    assert "pa55word" not in out and "k3y" not in out


def test_sigterm_exits_promptly_while_the_database_is_locked(tmp_path: Path) -> None:
    """A database call that hangs does not hold the process past the POST timeout and a grace:
    its claim expires as after a crash, and nothing is lost."""
    path = tmp_path / "paxyo.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = open_engine(url)
    make_events(engine, {111: 1})
    log = tmp_path / "sender.log"
    proc = _sender_process(url, f"http://127.0.0.1:{free_port()}/hook", log)  # refused
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        _wait_for(lambda: "attempt 1:" in log.read_text())
        locker.execute("BEGIN IMMEDIATE")
        time.sleep(2.5)  # the next attempt's write (or the next claim) waits for the lock
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        locker.close()
    assert "Traceback" not in log.read_text()
    assert webhook_queue.read_status(engine).pending == 1
    engine.dispose()


def test_a_retried_event_delivered_early_lets_the_next_ones_follow_at_once(
        hook_engine: sa.Engine) -> None:
    """A user's later events wait with the first one's backoff (the search for due events does
    not read them), but not after it is delivered."""
    receiver = Receiver(script=[500], script_user=111)
    server = ServerThread(receiver.app)
    server.start()
    made = make_events(hook_engine, {111: 3, 222: 1})
    d = webhook_deliveries

    def waits() -> dict[int, tuple[int, datetime]]:
        with hook_engine.connect() as conn:
            return {r.event_id: (r.attempts, r.next_attempt_at) for r in conn.execute(
                sa.select(d.c.event_id, d.c.attempts, d.c.next_attempt_at)
                .where(d.c.user_id == 111))}

    config = fast_config(f"{server.url}/hook", backoff_first=120.0, backoff_cap=120.0)

    async def scenario() -> None:
        sender = WebhookSender(hook_engine, config)
        async with sending(sender):
            first = int(made[111][0])
            await asyncio.to_thread(_wait_for, lambda: waits()[first][0] == 1)  # failed once
            # the first waits for its retry, and the two later events at least as long
            assert all(at > utcnow() + timedelta(seconds=30) for _, at in waits().values())
            await asyncio.to_thread(webhook_queue.retry, hook_engine, [first], utcnow())
            await asyncio.to_thread(_wait_for, lambda: len(receiver.accepted) == 4)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert receiver.accepted_of(111) == made[111]


def test_events_queued_while_their_user_is_being_delivered_all_follow_in_order(
        hook_engine: sa.Engine) -> None:
    """Events written while the sender delivers the same users' earlier ones: each is seen as
    its user's next (none waits behind an event already gone), in order."""
    receiver = Receiver()
    server = ServerThread(receiver.app)
    server.start()
    users = {111: 40, 222: 40}
    made: dict[int, list[str]] = {}

    def produce() -> None:
        made.update(make_events(hook_engine, users))

    sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook"))
    producer = threading.Thread(target=produce)
    try:
        producer.start()
        run_until([sender], lambda: not producer.is_alive()
                  and len(receiver.accepted) >= sum(users.values()))
    finally:
        producer.join()
        server.stop()
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids
    assert webhook_queue.read_status(hook_engine).pending == 0


def test_an_event_written_while_the_one_before_is_answered_is_sent_next(
        hook_engine: sa.Engine) -> None:
    """The writer of a user's new event and the sender deleting that user's delivered one take
    the same lock: the sender waits for the writer's commit and sees the new event as next."""
    receiver = Receiver(script=["slow"], slow_seconds=1.0)
    server = ServerThread(receiver.app)
    server.start()
    made = make_events(hook_engine, {111: 1})
    written: list[str] = []

    def write_during_the_answer() -> None:
        with hook_engine.connect() as conn, conn.begin():
            event = record_event(conn, 111, BALANCE_UPDATED, {"user_id": 111}, utcnow(),
                                 webhook=True)
            written.append(event.id)
            time.sleep(2.0)  # the receiver answers the first meanwhile

    sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook", timeout=5.0))
    writer = threading.Thread(target=write_during_the_answer)

    async def scenario() -> None:
        async with sending(sender):
            await asyncio.to_thread(_wait_for, lambda: len(receiver.requests) == 1)
            writer.start()
            await asyncio.to_thread(_wait_for, lambda: len(receiver.accepted) == 2, 15.0)

    try:
        asyncio.run(scenario())
    finally:
        writer.join()
        server.stop()
    assert receiver.accepted == [made[111][0], *written]
