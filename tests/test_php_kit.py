"""The PHP panel kit (clients/php) run by a real PHP against the real gateway and MariaDB.

Every test runs ``php`` as a subprocess: ``Paxyo\\Client`` against a gateway on a real port,
``Paxyo\\Token`` tokens opening /ws, ``Paxyo\\Webhook::verify`` on deliveries signed here with
Python's hmac, and the example receiver (``php -S``) crediting a MariaDB ``users`` table.

The setup installs Debian's ``php-cli php-curl php-mysql`` with apt-get when ``php`` is missing;
when that is impossible the tests skip, or fail under PAXYO_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pymysql
import pytest
from sqlalchemy.engine import make_url

from monitoring.metrics import process_metrics
from paxyo.events import ORDER_UPDATED, event_bytes, order_event_body
from paxyo.settings import Settings
from tests.conftest import make_database
from tests.support import ServerThread, free_port, unavailable
from wsgateway.app import create_app

pytestmark = pytest.mark.timeout(900)

KIT = Path(__file__).resolve().parent.parent / "clients" / "php"
PAXYO_PHP = KIT / "Paxyo.php"
RECEIVER = KIT / "examples" / "webhook.php"
PHP_PACKAGES = ["php-cli", "php-curl", "php-mysql"]
PHP_EXTENSIONS = ("curl", "hash", "json", "pdo_mysql")
ADMIN_TOKEN = "php-kit-admin-token"
JWT_SECRET = "php-kit-jwt-secret-that-is-long-enough"
WEBHOOK_SECRET = "whsec-php-kit-test"
WAIT = 10.0  # seconds: a receiver to listen, two deliveries to be waiting in MariaDB


class Unavailable(Exception):
    """PHP with the extensions the kit needs cannot be had here."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _missing_extensions(php: str) -> list[str]:
    loaded = {line.strip().lower() for line in _run([php, "-m"], 60).stdout.splitlines()}
    return [ext for ext in PHP_EXTENSIONS if ext not in loaded]


def _install_php() -> str:
    php = shutil.which("php")
    if php and not _missing_extensions(php):
        return php
    if not shutil.which("apt-get"):
        raise Unavailable("php (with curl and pdo_mysql) is missing and there is no apt-get")
    if os.geteuid() != 0:
        raise Unavailable("php (with curl and pdo_mysql) is missing and only root may install it")
    policy = _run(["apt-cache", "policy", *PHP_PACKAGES], 120).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        update = _run(["apt-get", "update"], 600)
        if update.returncode:
            raise Unavailable(f"apt-get update failed: {update.stderr.strip()[-500:]}")
    install = _run(["apt-get", "install", "-y", *PHP_PACKAGES], 1200)
    php = shutil.which("php")
    if install.returncode or not php:
        raise Unavailable(f"apt-get install php failed: {install.stderr.strip()[-500:]}")
    if missing := _missing_extensions(php):
        raise Unavailable(f"php lacks the extensions {missing} after apt-get install")
    return php


@pytest.fixture(scope="module")
def php() -> str:
    try:
        return _install_php()
    except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"PHP kit test: {exc}")


def run_php(php: str, code: str, **env: str) -> Any:
    """Run ``code`` after requiring Paxyo.php; it prints one JSON value, returned decoded."""
    done = subprocess.run(
        [php, "-d", "display_errors=stderr", "-d", "error_reporting=-1", "-r",
         f"require getenv('PAXYO_KIT'); {code}"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PAXYO_KIT": str(PAXYO_PHP), **env})
    assert done.returncode == 0 and not done.stderr, (done.stdout, done.stderr)
    return json.loads(done.stdout)


# -- Client against a real gateway ----------------------------------------------------------------

@pytest.fixture
def gateway(sqlite_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServerThread]:
    settings = Settings.from_env({
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_GODOFPANEL_URL": "http://127.0.0.1:9/api/v2",  # never called here
        "PAXYO_PROVIDER_GODOFPANEL_KEY": "k",
        "PAXYO_JWT_SECRET": JWT_SECRET,
        "PAXYO_ADMIN_TOKEN": ADMIN_TOKEN,
    })
    server = ServerThread(lambda: create_app(settings, process_metrics()))
    server.start()
    yield server
    server.stop()


# Each step prints [status, answer] or ["ApiError", status, error text, class check].
CLIENT_SCRIPT = r"""
$c = new Paxyo\Client(getenv('URL') . '/', getenv('TOKEN'));
$out = [];
$step = function (callable $call) use ($c, &$out) {
    try {
        $answer = $call();
        $out[] = [$c->lastStatus, $answer];
    } catch (Paxyo\ApiError $e) {
        $out[] = ['ApiError', $e->status, $e->error, $e instanceof RuntimeException];
    }
};
$order = ['id' => 123, 'user_id' => 111, 'provider' => 'godofpanel',
          'provider_order_id' => 23501, 'quantity' => 1000, 'charge' => '10.00',
          'service' => 1, 'link' => 'https://example.com/p/1'];
$step(fn () => $c->deposit(111, '25.00', 'pay-981'));
$step(fn () => $c->deposit(111, '25.00', 'pay-981'));
$step(fn () => $c->registerOrder($order));
$step(fn () => $c->registerOrder($order));
$step(fn () => $c->account(111));
$step(fn () => $c->order(123));
$step(fn () => $c->registerOrder(['id' => 124, 'charge' => '100.00'] + $order));
$step(fn () => $c->deposit(111, '1E2', 'pay-982'));
$step(fn () => $c->order(999));
$step(fn () => (new Paxyo\Client(getenv('URL'), 'wrong-token'))->account(111));
$step(fn () => (new Paxyo\Client(getenv('DEAD'), getenv('TOKEN'), 2))->account(111));
echo json_encode($out);
"""


def test_client_calls_the_api_and_raises_api_errors(php: str, gateway: ServerThread) -> None:
    out = run_php(php, CLIENT_SCRIPT, URL=gateway.url, TOKEN=ADMIN_TOKEN,
                  DEAD=f"http://127.0.0.1:{free_port()}")
    (deposit, again, placed, replaced, account, order, low, bad, missing, unauthorised,
     dead) = out
    assert deposit == [201, {"user_id": 111, "balance": "25.00"}]
    assert again == [200, {"user_id": 111, "balance": "25.00"}]
    assert placed[0] == 201 and placed[1]["id"] == 123 and placed[1]["charge"] == "10.00"
    assert replaced[0] == 200 and replaced[1] == placed[1]
    assert account == [200, {"user_id": 111, "balance": "15.00", "currency": "USD"}]
    assert order[0] == 200
    assert {k: order[1][k] for k in ("id", "user_id", "quantity", "charge", "refunded")} == {
        "id": 123, "user_id": 111, "quantity": 1000, "charge": "10.00", "refunded": "0.00"}
    assert low[:2] == ["ApiError", 409] and "balance" in low[2] and low[3] is True
    assert bad[:2] == ["ApiError", 400] and "amount" in bad[2]
    assert missing[:2] == ["ApiError", 404]
    assert unauthorised[:2] == ["ApiError", 401]
    assert dead[:2] == ["ApiError", 0] and dead[2]


# -- Token against /ws ----------------------------------------------------------------------------

def test_a_token_minted_in_php_opens_the_websocket(php: str, gateway: ServerThread) -> None:
    good, forged = run_php(php, """echo json_encode([
        Paxyo\\Token::mint(getenv('SECRET'), 111, 600),
        Paxyo\\Token::mint('another-secret-that-is-long-enough-too', 111)]);""",
        SECRET=JWT_SECRET)
    assert "=" not in good and jwt.get_unverified_header(good)["alg"] == "HS256"
    claims = jwt.decode(good, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "111" and claims["exp"] - claims["iat"] == 600

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gateway.url}/ws?token={good}") as ws:
                hello = await ws.receive_json(timeout=WAIT)
                assert hello["type"] == "hello" and hello["user_id"] == 111
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{gateway.url}/ws?token={forged}")
            assert refused.value.status == 401

    asyncio.run(scenario())


# -- Webhook::verify ---------------------------------------------------------------------------

def _event(outbox_id: int = 42, refund: str = "7.00", user_id: int = 111) -> bytes:
    body = order_event_body(order_id=123, user_id=user_id, status="Partial",
                            previous_status="In progress", remains=700, quantity=1000,
                            refund=Decimal(refund), balance=Decimal("22.00"), decimals=2)
    return event_bytes(outbox_id, ORDER_UPDATED,
                       orjson.dumps({**body, "at": "2026-11-30T07:50:00Z"}))


def _signature(body: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


VERIFY_SCRIPT = r"""
try {
    echo json_encode(['event' => Paxyo\Webhook::verify(
        file_get_contents(getenv('BODY_FILE')), getenv('SIGNATURE'), getenv('SECRET'))]);
} catch (Paxyo\SignatureError $e) {
    echo json_encode(['refused' => $e->getMessage()]);
}
"""


def _verify(php: str, tmp_path: Path, body: bytes, signature: str,
            secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
    body_file = tmp_path / "body.json"
    body_file.write_bytes(body)
    return run_php(php, VERIFY_SCRIPT, BODY_FILE=str(body_file), SIGNATURE=signature,
                   SECRET=secret)


def test_webhook_verify_accepts_a_signed_delivery(php: str, tmp_path: Path) -> None:
    body = _event()
    assert _verify(php, tmp_path, body, _signature(body)) == {"event": orjson.loads(body)}
    # Several v1 values (a secret being rotated): any one that matches is enough.
    other = _signature(body, "old-secret").split(",")[1]
    rotated = _signature(body).replace(",", f",{other},")
    assert _verify(php, tmp_path, body, rotated) == {"event": orjson.loads(body)}


@pytest.mark.parametrize("fault", ["tampered body", "wrong secret", "old timestamp",
                                   "no v1", "no t"])
def test_webhook_verify_refuses(php: str, tmp_path: Path, fault: str) -> None:
    body = _event()
    signature = _signature(body)
    if fault == "tampered body":
        body = body.replace(b'"refund":"7.00"', b'"refund":"70.00"')
    elif fault == "wrong secret":
        signature = _signature(body, "not-the-secret")
    elif fault == "old timestamp":
        signature = _signature(body, at=int(time.time()) - 301)
    elif fault == "no v1":
        signature = signature.split(",")[0]
    else:
        signature = signature.split(",")[1]
    assert "refused" in _verify(php, tmp_path, body, signature)


# -- the example receiver against MariaDB ---------------------------------------------------------

@pytest.fixture
def panel_db(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh MariaDB database holding a panel's users table and paxyo_events."""
    for url in make_database("mysql", tmp_path):
        where = make_url(url)  # PAXYO_TEST_MYSQL_URL's server, a fresh database on it
        params = {"host": where.host or "127.0.0.1", "port": where.port or 3306,
                  "user": where.username or "root", "password": where.password or "",
                  "database": where.database, "autocommit": True}
        conn = pymysql.connect(**params)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE users (id BIGINT PRIMARY KEY, "
                        "balance DECIMAL(20,2) NOT NULL) ENGINE=InnoDB")
            cur.execute("CREATE TABLE paxyo_events (event_id VARCHAR(32) PRIMARY KEY) "
                        "ENGINE=InnoDB")
            cur.execute("INSERT INTO users VALUES (111, 15.00), (222, 5.00)")
        conn.close()
        yield params


def _panel_state(params: dict[str, Any]) -> tuple[dict[int, Decimal], list[str]]:
    conn = pymysql.connect(**params)
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance FROM users")
        balances = dict(cur.fetchall())
        cur.execute("SELECT event_id FROM paxyo_events ORDER BY event_id")
        events = [row[0] for row in cur.fetchall()]
    conn.close()
    return balances, events


@contextlib.contextmanager
def _receiver(php: str, params: dict[str, Any]) -> Iterator[str]:
    """The example receiver under ``php -S`` with four workers (deliveries run at once)."""
    port = free_port()
    proc = subprocess.Popen(
        [php, "-S", f"127.0.0.1:{port}", str(RECEIVER)], cwd=RECEIVER.parent,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers are stopped with it, as a group
        env={**os.environ, "PHP_CLI_SERVER_WORKERS": "4", "PAXYO_WEBHOOK_SECRET": WEBHOOK_SECRET,
             "PAXYO_PANEL_DSN": _dsn(params), "PAXYO_PANEL_DB_USER": params["user"],
             "PAXYO_PANEL_DB_PASSWORD": params["password"]})
    url = f"http://127.0.0.1:{port}/paxyo-webhook"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
            except urllib.error.HTTPError:
                break  # 405 to a GET: it listens
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "php -S did not start"
                time.sleep(0.05)
        yield url
    finally:
        # the server's forked workers outlive a parent stopped alone (each kept its port)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _dsn(params: dict[str, Any]) -> str:
    return (f"mysql:host={params['host']};port={params['port']};dbname={params['database']};"
            "charset=utf8mb4")


def _deliver(url: str, body: bytes, signature: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Paxyo-Signature": signature,
        "Paxyo-Event-Id": orjson.loads(body)["id"]})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_receiver_applies_a_refund_once_however_often_it_arrives(
        php: str, panel_db: dict[str, Any]) -> None:
    body = _event(outbox_id=42, refund="7.00")
    with _receiver(php, panel_db) as url:
        answers = [_deliver(url, body, _signature(body)) for _ in range(3)]
        assert [status for status, _ in answers] == [200, 200, 200], answers
        assert "already applied" in answers[1][1] and "already applied" in answers[2][1]
        assert _panel_state(panel_db) == ({111: Decimal("22.00"), 222: Decimal("5.00")},
                                          ["0000000000000042"])
        # A status change without money is recorded and changes no balance.
        quiet = _event(outbox_id=43, refund="0.00")
        assert _deliver(url, quiet, _signature(quiet))[0] == 200
        assert _panel_state(panel_db)[0][111] == Decimal("22.00")


LOCK_WAIT_POLL = 0.2  # seconds; InnoDB refreshes INNODB_TRX only after 0.1 s without a read


def _lock_waits(params: dict[str, Any]) -> int:
    conn = pymysql.connect(**{**params, "database": "information_schema"})
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM INNODB_TRX t JOIN PROCESSLIST p "
                    "ON p.ID = t.trx_mysql_thread_id "
                    "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = %s", (params["database"],))
        count = cur.fetchone()[0]
    conn.close()
    return count


def test_two_deliveries_of_one_event_at_once_credit_once(
        php: str, panel_db: dict[str, Any]) -> None:
    body = _event(outbox_id=77, refund="7.00")
    answers: list[tuple[int, str]] = []
    holder = pymysql.connect(**{**panel_db, "autocommit": False})
    with _receiver(php, panel_db) as url:
        # Hold user 111's row: the first delivery inserts the event id and waits on the row,
        # the second waits on the first's uncommitted event id. Both are inside at once.
        with holder.cursor() as cur:
            cur.execute("SELECT balance FROM users WHERE id = 111 FOR UPDATE")
        # The second is sent once the first waits: a php -S worker that accepted both
        # connections at once would otherwise serve them one after the other.
        threads = [threading.Thread(target=lambda: answers.append(
            _deliver(url, body, _signature(body)))) for _ in range(2)]
        waiting = []
        for thread in threads:
            thread.start()
            deadline = time.monotonic() + WAIT
            while _lock_waits(panel_db) < len(waiting) + 1 and time.monotonic() < deadline:
                time.sleep(LOCK_WAIT_POLL)  # polled faster, the table would never change
            waiting.append(_lock_waits(panel_db))
        holder.commit()
        holder.close()
        for thread in threads:
            thread.join(30)
    assert waiting == [1, 2]
    assert sorted(status for status, _ in answers) == [200, 200], answers
    assert sum("already applied" in text for _, text in answers) == 1, answers
    assert _panel_state(panel_db) == ({111: Decimal("22.00"), 222: Decimal("5.00")},
                                      ["0000000000000077"])


def test_receiver_refuses_a_bad_signature_and_changes_nothing(
        php: str, panel_db: dict[str, Any]) -> None:
    body = _event(outbox_id=42, refund="7.00")
    forged = body.replace(b'"refund":"7.00"', b'"refund":"700.00"')
    with _receiver(php, panel_db) as url:
        assert _deliver(url, forged, _signature(body))[0] == 400
        assert _deliver(url, body, _signature(body, "not-the-secret"))[0] == 400
        assert _deliver(url, body, "")[0] == 400
    assert _panel_state(panel_db) == ({111: Decimal("15.00"), 222: Decimal("5.00")}, [])


def test_receiver_answers_500_when_the_database_fails(
        php: str, panel_db: dict[str, Any]) -> None:
    body = _event(outbox_id=42, refund="7.00", user_id=333)  # no such user: nothing recorded
    with _receiver(php, panel_db) as url:
        assert _deliver(url, body, _signature(body))[0] == 500
    with _receiver(php, {**panel_db, "database": "no_such_database"}) as url:
        assert _deliver(url, body, _signature(body))[0] == 500
    assert _panel_state(panel_db) == ({111: Decimal("15.00"), 222: Decimal("5.00")}, [])


def test_the_sender_delivers_real_refunds_to_the_example_receiver_once(
        php: str, panel_db: dict[str, Any], engine: Any) -> None:
    """Paxyo's own sender POSTs a Partial refund and a Canceled one to examples/webhook.php
    (MariaDB): the panel's balance rises by exactly the refunds, also when one is sent again."""
    from paxyo.accounts import deposit
    from paxyo.clock import utcnow
    from paxyo.observations import apply_observations
    from paxyo.orders import NewOrder, place_order
    from paxyo.status_entries import StatusEntry
    from paxyo.webhook_queue import read_status, retry
    from webhooks.sender import SenderConfig, WebhookSender

    deposit(engine, 111, Decimal("20.00"), "pay-1", 2, webhook=True)
    for oid in (1, 2):
        place_order(engine, NewOrder(oid, 111, "sim", f"900{oid}", 1000, Decimal("10.00")),
                    decimals=2, poll_interval=30, webhook=True)
    report = apply_observations(
        engine, "sim", [1, 2], {"9001": StatusEntry("Partial", 300, None, None),
                                "9002": StatusEntry("Canceled", 0, None, None)},
        observed_at=utcnow(), decimals=2, poll_interval=30, webhook=True)
    assert [str(c.refund) for c in report.changes] == ["3.00", "10.00"]

    def send_all(url: str) -> None:
        sender = WebhookSender(engine, SenderConfig(url=url, secret=WEBHOOK_SECRET,
                                                    timeout=10, poll_interval=0.05))

        async def scenario() -> None:
            task = asyncio.create_task(sender.run())
            deadline = time.monotonic() + WAIT
            while (await asyncio.to_thread(read_status, engine)).pending:
                assert time.monotonic() < deadline, "not delivered"
                await asyncio.sleep(0.05)
            sender.stop()
            await task

        asyncio.run(scenario())

    with _receiver(php, panel_db) as url:
        send_all(url)
        balances, applied = _panel_state(panel_db)
        assert balances[111] == Decimal("28.00")  # 15.00 + 3.00 + 10.00
        assert applied == [f"{n:016d}" for n in range(1, 6)]
        retry(engine, [4, 5], utcnow())  # the refunds again: applied already, nothing changes
        send_all(url)
        assert _panel_state(panel_db) == (balances, applied)
        assert read_status(engine).failed == 0
