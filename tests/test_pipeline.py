"""Dispatcher → RQ → worker → ledger → Redis Streams, with real processes where it matters."""

import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from rq import Queue
from sqlalchemy import update

from dispatcher.loop import Dispatcher
from dispatcher.planner import plan_shards
from monitoring.metrics import process_metrics
from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.keys import Keys
from paxyo.ledger import ledger_mismatches
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.store.schema import orders

ROOT = Path(__file__).resolve().parents[1]
D = Decimal


def seed(engine, count, user=111, provider="sim", start=1, pid_base=70000):
    deposit(engine, user, D("10.00") * count, f"seed-{user}-{start}", 2)
    for oid in range(start, start + count):
        place_order(engine, NewOrder(oid, user, provider, str(pid_base + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    make_due(engine)


def make_due(engine):
    with engine.begin() as conn:
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))


def worker_env(settings):
    return {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "PAXYO_REDIS_PREFIX": settings.redis_prefix, "PAXYO_QUEUE": settings.queue_name,
            **{f"PAXYO_PROVIDER_{p.name.upper()}_URL": p.url for p in settings.providers.values()},
            **{f"PAXYO_PROVIDER_{p.name.upper()}_KEY": p.key
               for p in settings.providers.values()},
            "PAXYO_PROVIDER_ATTEMPTS": "2", "PAXYO_PROVIDER_TIMEOUT": "5"}


def run_worker_burst(settings):
    proc = subprocess.run([sys.executable, "-m", "paxyo.cli", "worker", "--burst"], cwd=ROOT,
                          env=worker_env(settings), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.fixture
def queued_settings(settings, redis_prefix):
    return settings.with_overrides(queue_name=f"{redis_prefix}-q")


def test_dispatch_and_worker_apply_refunds_and_publish(queued_settings, engine, simulator):
    settings = queued_settings
    seed(engine, 120)
    for oid in range(1, 121):
        status = ("Canceled", 0) if oid <= 10 else ("Partial", 300) if oid <= 20 else \
            ("In progress", 500)
        simulator.set_order(70000 + oid, status=status[0], remains=status[1])
    client = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(settings, engine, client, process_metrics())
    shards = dispatcher.tick()
    assert [len(s.order_ids) for s in shards] == [100, 20]
    assert Queue(settings.queue_name, connection=client).count == 1  # one job, both shards
    assert dispatcher.tick() == []  # leased: nothing enqueued twice
    run_worker_burst(settings)
    assert get_balance(engine, 111) == D("100.00") + D("30.00")
    assert get_order(engine, 15, 2)["refunded"] == "3.00"
    assert get_order(engine, 50, 2)["status"] == "In progress"
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []
    stream = client.xrange(Keys(settings.redis_prefix).events)
    ids = [entry[b"i"] for _, entry in stream]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 120  # every status change has its event
    assert simulator.stats()["status_requests"] == 2


def test_rerunning_a_finished_shard_changes_nothing(queued_settings, engine, simulator):
    from workers.context import build_context
    from workers.jobs import run_shard

    seed(engine, 5)
    for oid in range(1, 6):
        simulator.set_order(70000 + oid, status="Canceled", remains=0)
    shard = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)[0]
    ctx = build_context(queued_settings, process_metrics())
    try:
        first = run_shard(ctx, "sim", shard.order_ids, shard.token)
        again = run_shard(ctx, "sim", shard.order_ids, shard.token)
    finally:
        ctx.close()
    assert first["changed"] == 5 and again["checked"] == 0
    assert get_balance(engine, 111) == D("50.00")


def test_dispatcher_puts_several_shards_in_each_job_most_overdue_first(queued_settings,
                                                                       engine):
    seed(engine, 1000)
    client = redis.Redis.from_url(queued_settings.redis_url)
    metrics = process_metrics()
    dispatcher = Dispatcher(queued_settings.with_overrides(shards_per_job=4), engine, client,
                            metrics)
    shards = dispatcher.tick()
    planned = metrics.registry.get_sample_value("paxyo_dispatcher_plan_seconds_count")
    assert planned == 1  # the tick's planning time is observed once
    jobs = Queue(queued_settings.queue_name, connection=client).get_jobs()
    assert [len(job.args[0]) for job in jobs] == [4, 4, 2]
    assert [token for job in jobs for _, _, token in job.args[0]] == [s.token for s in shards]
    assert {job.func_name for job in jobs} == {"workers.jobs.check_shards"}


def test_dispatcher_keeps_the_queue_short_when_workers_fall_behind(queued_settings, engine):
    from dispatcher import loop

    seed(engine, 1000)
    client = redis.Redis.from_url(queued_settings.redis_url)
    # one shard per job: the room counted in jobs is then the room in shards
    dispatcher = Dispatcher(queued_settings.with_overrides(shards_per_job=1), engine, client,
                            process_metrics())
    first = dispatcher.tick()  # no worker is running: only MIN_QUEUED shards may wait
    assert len(first) == min(10, loop.MIN_QUEUED)
    assert dispatcher.tick() == []  # room left, but nothing else is due
    seed(engine, 4500, start=2000)  # 45 more shards' worth, room for 40
    assert len(dispatcher.tick()) == loop.MIN_QUEUED - 10
    assert dispatcher.tick() == []  # full: due orders wait in the database
    assert Queue(queued_settings.queue_name, connection=client).count == loop.MIN_QUEUED
