"""Webhook delivery: signed, at least once, in order per user, from the queue in the database.

A real receiver (an aiohttp server) answers as each test scripts it; the sender runs as in
production, in-process (short timeouts and backoff) or as the ``paxyo webhooks run`` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
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
from paxyo.events import event_id
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


@pytest.fixture(params=["sqlite", "postgresql"])
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


def run_until(senders: list[WebhookSender], done, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Run the senders until ``done()`` holds (or fail after ``timeout`` seconds)."""

    async def scenario() -> None:
        tasks = [asyncio.create_task(s.run()) for s in senders]
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "webhooks not delivered in time"
            await asyncio.sleep(0.05)
        for s in senders:
            s.stop()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_500_500_timeout_then_200_delivers_every_event_in_order_signed(
        hook_engine: sa.Engine) -> None:
    receiver = Receiver(script=[500, 500, "hang", 200], script_user=111, hang_seconds=1.5)
    server = ServerThread(receiver.app)
    server.start()
    try:
        made = make_events(hook_engine, {111: 4, 222: 3})
        metrics = process_metrics()
        sender = WebhookSender(hook_engine, fast_config(f"{server.url}/hook"), metrics)
        total = sum(len(ids) for ids in made.values())
        run_until([sender], lambda: len(receiver.accepted) >= total)
    finally:
        server.stop()
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
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(1.0)  # connection refused, again and again
        status = await asyncio.to_thread(webhook_queue.read_status, hook_engine)
        assert status.pending == 12 and status.last_error is not None
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 30
        while len(receiver.accepted) < 12:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        sender.stop()
        await task

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids


def test_two_senders_share_the_work_one_event_in_flight_per_user(
        hook_engine: sa.Engine) -> None:
    receiver = Receiver()
    server = ServerThread(receiver.app)
    server.start()
    try:
        made = make_events(hook_engine, {u: 6 for u in range(1, 9)})
        senders = [WebhookSender(hook_engine, fast_config(f"{server.url}/hook",
                                                          concurrency=4))
                   for _ in range(2)]
        run_until(senders, lambda: len(receiver.accepted) >= 48)
    finally:
        server.stop()
    assert receiver.max_in_flight_per_user == 1
    assert len(receiver.requests) == 48  # every answer was 2xx: each event sent once
    for user, ids in made.items():
        assert receiver.accepted_of(user) == ids


def test_an_event_failing_past_max_age_is_marked_failed_then_retried(
        hook_engine: sa.Engine, hook_db: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    receiver = Receiver(script=[500] * 1000)
    server = ServerThread(receiver.app)
    server.start()
    try:
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
    finally:
        server.stop()


def test_retry_refuses_unknown_and_malformed_ids(
        hook_engine: sa.Engine, hook_db: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    made = make_events(hook_engine, {111: 1})
    monkeypatch.setenv("DATABASE_URL", hook_db)
    assert paxyo_main(["webhooks", "retry", made[111][0], "999999"]) == 1
    assert "no such event: 999999; nothing queued" in capsys.readouterr().err
    for bad in ("1,2", "٣", "\x00", "-1", "1" * 30):
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
    proc = _sender_process(hook_db, f"{server.url}/hook", log)
    try:
        deadline = time.monotonic() + 30
        while not any(True for _ in receiver.requests):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        hung = receiver.requests[0][0]
        os.killpg(proc.pid, signal.SIGKILL)  # mid-delivery: the POST is in flight
        proc.wait()
        proc = _sender_process(hook_db, f"{server.url}/hook", log)
        while len(set(receiver.accepted)) < 6:
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
    assert "Traceback" not in log.read_text()


def test_the_sender_needs_a_url_and_a_secret(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAXYO_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("PAXYO_WEBHOOK_SECRET", raising=False)
    assert paxyo_main(["webhooks", "run"]) == 2
    assert "PAXYO_WEBHOOK_URL" in capsys.readouterr().err
    monkeypatch.setenv("PAXYO_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert paxyo_main(["webhooks", "run"]) == 2
    assert "PAXYO_WEBHOOK_SECRET: is required" in capsys.readouterr().err


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
