"""`paxyo check-once` against the real simulator: the seed's lines, exact refunds, idempotent."""

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import select

from paxyo.accounts import deposit, get_balance
from paxyo.cli.check_once import run_cycle
from paxyo.keys import Keys
from paxyo.ledger import ledger_mismatches
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.settings import ProviderConfig
from paxyo.store.engine import open_engine
from paxyo.store.schema import orders

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]"
D = Decimal


def place(engine, oid, user, pid, charge="10.00", quantity=1000):
    place_order(engine, NewOrder(oid, user, "sim", str(pid), quantity, D(charge)),
                decimals=2, poll_interval=30)


def cycle(settings, engine):
    lines: list[str] = []
    summary = run_cycle(settings, emit=lines.append)
    return summary, lines


def test_one_cycle_refunds_exactly_and_prints_the_seed_lines(settings, engine, simulator):
    deposit(engine, 111, D("50.00"), "p1", 2)
    deposit(engine, 222, D("50.00"), "p2", 2)
    for oid, user in ((123, 111), (124, 111), (125, 111), (126, 222), (127, 222)):
        place(engine, oid, user, oid + 23000)
        simulator.set_order(oid + 23000, status="Pending", remains=1000)
    simulator.set_order(23123, status="Partial", remains=700)
    simulator.set_order(23124, status="Canceled", remains=1000)
    simulator.set_order(23125, status="Completed", remains=0)
    simulator.set_order(23126, status="cancelled", remains="Unknown")
    simulator.set_order(23127, entry="Incorrect order ID")

    summary, lines = cycle(settings, engine)

    assert re.fullmatch(STAMP + r" Starting order status check\.\.\.", lines[0])
    assert re.fullmatch(STAMP + r" Complete: Checked 2 users, 4 orders updated", lines[-1])
    assert "REFUND: $7.00 for Order #123 (Partial, 700 remains)" in lines
    assert "REFUND: $10.00 for Order #124 (Canceled)" in lines
    assert "REFUND: $10.00 for Order #126 (Canceled)" in lines
    assert "  User 111: 3 orders updated" in lines
    assert "  User 222: 1 orders updated" in lines
    assert get_balance(engine, 111) == D("37.00")
    assert get_balance(engine, 222) == D("40.00")  # 127 is still open
    assert get_order(engine, 127, 2)["status"] == "Pending"
    assert summary.report.no_answer == 1

    # the events reached Redis, once each
    client = redis.Redis.from_url(settings.redis_url)
    entries = client.xrange(Keys(settings.redis_prefix).events)
    # the cycle's 4 changes, preceded (in id order) by the users' unpublished earlier events
    changes = [e for _, e in entries if b'"previous_status":"Pending"' in e[b"d"]]
    assert len(changes) == 4
    ids = [int(e[b"i"]) for _, e in entries]
    assert ids == sorted(set(ids))
    assert b'"refund":"7.00"' in b"".join(e[1][b"d"] for e in entries)

    again, lines2 = cycle(settings, engine)
    assert again.updated == 0
    assert re.fullmatch(STAMP + r" Complete: Checked 1 users, 0 orders updated", lines2[-1])
    assert not any(line.startswith("REFUND") for line in lines2)
    assert get_balance(engine, 111) == D("37.00")
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def test_cli_check_once_twice_at_the_same_time_never_double_credits(settings, engine, simulator):
    deposit(engine, 111, D("1000.00"), "p1", 2)
    for oid in range(1, 61):
        place(engine, oid, 111, 5000 + oid)
        status = ("Canceled", 1000) if oid % 3 == 0 else ("Partial", 250) if oid % 3 == 1 \
            else ("In progress", 500)
        simulator.set_order(5000 + oid, status=status[0], remains=status[1])
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "PAXYO_REDIS_PREFIX": settings.redis_prefix,
           "PAXYO_PROVIDER_SIM_URL": simulator.api_url, "PAXYO_PROVIDER_SIM_KEY": simulator.key}
    cmd = [sys.executable, "-m", "paxyo.cli", "check-once"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    refund_lines = [line for out, _ in outputs for line in out.splitlines()
                    if line.startswith("REFUND")]
    assert len(refund_lines) == 40  # 20 canceled + 20 partial, each printed by one process
    expected = D("1000.00") - 60 * D("10.00") + 20 * D("10.00") + 20 * D("2.50")
    assert get_balance(engine, 111) == expected
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []
    check = open_engine(settings.database_url)
    assert get_order(check, 1, 2)["refunded"] == "2.50"
    check.dispose()


def test_a_failed_provider_is_reported_and_the_others_are_still_checked(settings, engine,
                                                                         simulator):
    down = ProviderConfig("down", "http://127.0.0.1:1/api/v2", "k")
    settings = settings.with_overrides(providers={**settings.providers, "down": down},
                                       provider_attempts=1)
    deposit(engine, 111, D("50.00"), "p1", 2)
    place(engine, 1, 111, 9001)
    place_order(engine, NewOrder(2, 111, "down", "9002", 1000, D("10.00")),
                decimals=2, poll_interval=30)
    simulator.set_order(9001, status="Canceled", remains=1000)

    summary, lines = cycle(settings, engine)

    assert summary.failed_providers == ["down"]
    assert "REFUND: $10.00 for Order #1 (Canceled)" in lines
    assert re.fullmatch(STAMP + r" Complete: Checked 1 users, 1 orders updated", lines[-1])
    with engine.connect() as conn:  # the failed shard's order is released, to be tried later
        row = conn.execute(select(orders).where(orders.c.id == 2)).one()
    assert row.status_class == "open" and row.lease_token is None


def test_check_once_keeps_to_the_providers_rate_limit(settings, engine, simulator):
    settings = settings.with_overrides(provider_rate_limit_per_min=1)
    deposit(engine, 111, D("1500.00"), "p1", 2)
    for oid in range(1, 151):  # two shards: the second one would exceed 1 call per minute
        place(engine, oid, 111, 9000 + oid)
        simulator.set_order(9000 + oid, status="Canceled", remains=1000)

    summary, lines = cycle(settings, engine)

    assert simulator.stats()["status_requests"] == 1
    assert summary.held_back == {"sim": "rate limited"} and summary.updated == 100
    assert "  User 111: 100 orders updated" in lines
    with engine.connect() as conn:
        held = conn.execute(select(orders.c.lease_token).where(orders.c.id > 100)).all()
    assert held and all(token is None for (token,) in held)
