"""Applying provider replies: one bad entry is set aside and never holds up the others."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update

from dispatcher.planner import plan_shards
from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.ledger import ledger_mismatches
from paxyo.observations import apply_observations
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.store.schema import orders
from providers.replies import StatusEntry, parse_multi_status, parse_remains

D = Decimal


def seed(engine, count, user=111):
    deposit(engine, user, D("10.00") * count, f"seed-{user}", 2)
    for oid in range(1, count + 1):
        place_order(engine, NewOrder(oid, user, "sim", str(7000 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)


def apply(engine, replies, ids):
    return apply_observations(engine, "sim", ids, replies, observed_at=utcnow(), decimals=2,
                              poll_interval=30)


@pytest.mark.parametrize("value", ["1e30", "1e400", 10**30, -(10**30), "1E19", 2**63,
                                   "\uff19", "\u0663", "1_000", "NaN", "Infinity", "1e-5", "\x00"])
def test_remains_out_of_range_or_not_ascii_is_no_number(value):
    assert parse_remains(value) is None


@pytest.mark.parametrize("value, expected", [("157", 157), (157, 157), ("157.0", 157),
                                             ("-5", -5), (" 42 ", 42), ("0", 0)])
def test_remains_within_range_are_read(value, expected):
    assert parse_remains(value) == expected


def test_a_huge_remains_in_the_reply_never_rolls_back_the_others(any_engine):
    seed(any_engine, 40)
    body = {str(7000 + oid): {"status": "Canceled", "remains": "0"} for oid in range(1, 41)}
    body["7001"] = {"status": "Partial", "remains": "1e30"}
    body["7002"] = {"status": "Partial", "remains": 10**30}
    body["7003"] = {"status": "In progress", "remains": "1e400"}
    replies = parse_multi_status(_dumps(body), [str(7000 + o) for o in range(1, 41)])
    report = apply(any_engine, replies, range(1, 41))
    assert len(report.changes) == 37 + 1  # 37 canceled, order 3 moves to In progress
    assert report.bad_remains == 2
    assert get_order(any_engine, 1, 2)["status"] == "Pending"
    assert get_order(any_engine, 3, 2)["status"] == "In progress"
    assert get_order(any_engine, 3, 2)["remains"] == 1000  # kept: no usable number
    assert get_balance(any_engine, 111) == D("370.00")
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def _dumps(body) -> bytes:
    """JSON with integers past 64 bits, which orjson refuses to write (PHP panels do not)."""
    return json.dumps(body).encode()


def test_a_change_that_fails_is_set_aside_and_the_rest_commit(any_engine):
    seed(any_engine, 10)
    with any_engine.begin() as conn:  # stored before quantities were checked at the door
        conn.execute(update(orders).where(orders.c.id == 6).values(quantity=0))
    replies = {str(7000 + oid): StatusEntry("Canceled", 0, None, None) for oid in range(1, 11)}
    # past every parser: a value no BIGINT column holds, and a NUL no PostgreSQL text holds
    replies["7004"] = StatusEntry("Partial", 10**30, None, None)
    replies["7005"] = StatusEntry("Awaiting\x00 review", 5, None, None)
    replies["7006"] = StatusEntry("Partial", 5, None, None)  # refund divides by quantity 0
    report = apply(any_engine, replies, range(1, 11))
    assert sorted(c.order_id for c in report.changes) == [1, 2, 3, 7, 8, 9, 10]
    assert (report.bad_remains, report.unknown, report.rejected) == (1, 1, 1)
    assert get_order(any_engine, 4, 2)["status"] == "Pending"
    assert get_order(any_engine, 5, 2)["provider_status"] == "Awaiting? review"
    assert get_order(any_engine, 6, 2)["status"] == "Pending"
    assert get_order(any_engine, 6, 2)["checked_at"] is not None  # rescheduled, not stuck
    assert get_balance(any_engine, 111) == D("70.00")
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def test_a_stored_id_with_commas_is_never_sent_and_the_call_carries_at_most_100_ids(
        queued_settings, engine, simulator):
    from monitoring.metrics import process_metrics
    from workers.context import build_context
    from workers.jobs import run_shard

    seed(engine, 100)
    with engine.begin() as conn:  # stored before ids were checked at the door
        conn.execute(update(orders).where(orders.c.id == 1)
                     .values(provider_order_id="1,2,3,4,5"))
        conn.execute(update(orders).where(orders.c.id == 2)
                     .values(provider_order_id="7003"))  # two orders, one provider id
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))
    for oid in range(2, 101):
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    [shard] = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    ctx = build_context(queued_settings, process_metrics())
    try:
        result = run_shard(ctx, "sim", shard.order_ids, shard.token)
    finally:
        ctx.close()
    stats = simulator.stats()
    assert stats["status_requests"] == 1 and stats["orders_queried"] == 98
    assert result["changed"] == 99
    bad = get_order(engine, 1, 2)
    assert bad["status"] == "Pending" and bad["provider_status"] == "invalid provider order id"
    assert get_balance(engine, 111) == D("990.00")


@pytest.fixture
def queued_settings(settings, redis_prefix):
    return settings.with_overrides(queue_name=f"{redis_prefix}-q")
