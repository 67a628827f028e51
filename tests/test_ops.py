"""Operator tools: ``paxyo status``, ``paxyo failed list|requeue``, and /readyz."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import orjson
import pytest
import redis
from rq import Queue
from rq.worker import SimpleWorker

from paxyo import ops
from paxyo.accounts import deposit
from paxyo.cli import main
from paxyo.keys import Keys
from paxyo.orders import NewOrder, place_order
from paxyo.protection import CircuitBreaker
from tests.support import ServerThread, free_port, http_json


def boom() -> None:
    raise RuntimeError("provider exploded")


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def ops_settings(settings, redis_prefix):
    return settings.with_overrides(queue_name=f"{redis_prefix}-q")


@pytest.fixture
def cli_env(ops_settings, monkeypatch):
    for var, value in {"DATABASE_URL": ops_settings.database_url,
                       "REDIS_URL": ops_settings.redis_url,
                       "PAXYO_REDIS_PREFIX": ops_settings.redis_prefix,
                       "PAXYO_QUEUE": ops_settings.queue_name}.items():
        monkeypatch.setenv(var, value)
    for var in [v for v in os.environ if v.startswith("PAXYO_PROVIDER_")]:
        monkeypatch.delenv(var)
    return ops_settings


def fail_jobs(client, queue_name: str, count: int) -> list[str]:
    queue = Queue(queue_name, connection=client)
    ids = [queue.enqueue(boom, description=f"boom {n}").id for n in range(count)]
    SimpleWorker([queue], connection=client).work(burst=True)
    return ids


def test_status_reports_orders_queue_dispatcher_outbox_and_gateways(
        ops_settings, engine, client, capsys, cli_env):
    deposit(engine, 111, Decimal("100.00"), "seed", 2)
    for oid, provider in ((1, "sim"), (2, "sim"), (3, "other")):
        place_order(engine, NewOrder(oid, 111, provider, str(500 + oid), 1000, Decimal("10.00")),
                    decimals=2, poll_interval=30)
    keys = Keys(ops_settings.redis_prefix)
    client.set(keys.dispatcher_lock, "abcdef0123456789")
    client.set(keys.dispatcher_heartbeat, orjson.dumps(
        {"at": time.time() - 2, "fence": 7, "enqueued": 3}))
    ops.beat_gateway(client, keys, "web:one")
    for _ in range(5):
        CircuitBreaker(client, keys).record_failure("other")
    Queue(ops_settings.queue_name, connection=client).enqueue(boom)

    db = ops.read_database_status(engine)
    assert db.open_orders == {"sim": 2, "other": 1}
    assert db.outbox_backlog == 4  # deposit and order events, not yet published
    rs = ops.read_redis_status(client, ops_settings, db.open_orders)
    assert rs.queue.queued == 1 and rs.gateways_up == 1
    assert rs.dispatcher.leader == "abcdef01" and rs.dispatcher.term == 7

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "open orders: 3" in out
    assert "  other: 1 (circuit open)" in out and "  sim: 2 (circuit closed)" in out
    assert "queue: 1 queued, 0 running, 0 scheduled for retry, 0 failed" in out
    assert "dispatcher: leader abcdef01 (term 7, last tick 2." in out
    assert "outbox backlog: 4" in out and "gateways up: 1" in out


def test_status_names_an_unreachable_redis(cli_env, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["status"]) == 1
    assert "paxyo status: ConnectionError" in capsys.readouterr().err


def test_failed_list_and_requeue(ops_settings, client, capsys, cli_env):
    ids = fail_jobs(client, ops_settings.queue_name, 3)
    assert main(["failed", "list"]) == 0
    out = capsys.readouterr().out
    for job_id in ids:
        assert job_id in out
    assert "RuntimeError: provider exploded" in out

    assert main(["failed", "requeue", ids[0]]) == 0
    assert "requeued 1 job(s)" in capsys.readouterr().out
    queue = Queue(ops_settings.queue_name, connection=client)
    assert queue.job_ids == [ids[0]]
    assert main(["failed", "requeue", "--all"]) == 0
    assert "requeued 2 job(s)" in capsys.readouterr().out
    assert sorted(queue.job_ids) == sorted(ids)
    assert main(["failed", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no failed jobs"
    assert main(["failed", "requeue"]) == 2


def test_readyz_fails_when_the_database_is_unreachable(settings, tmp_path):
    from monitoring.metrics import process_metrics
    from wsgateway.app import create_app

    broken = settings.with_overrides(
        database_url=f"sqlite:///{tmp_path / 'missing-dir' / 'nope.db'}")
    server = ServerThread(lambda: create_app(broken, process_metrics()))
    server.start()
    try:
        status, body = http_json("GET", server.url + "/readyz")
        assert status == 503
        assert body["database"] == "unreachable" and body["redis"] == "ok"
        assert body["error"] == "database unreachable"
        status, _ = http_json("GET", server.url + "/healthz")
        assert status == 200
    finally:
        server.stop()
