"""workers.jobs.run_shard: claim, hold back, ask the provider, apply, release."""

import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import select, update

from dispatcher.planner import plan_shards
from monitoring.metrics import process_metrics
from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.orders import NewOrder, place_order
from paxyo.settings import ProviderConfig
from paxyo.store.schema import orders
from providers.client import ProviderUnavailable
from tests.support import free_port
from workers.context import build_context
from workers.jobs import run_shard, run_shards

D = Decimal


def seed(engine, count: int, provider: str = "sim") -> None:
    deposit(engine, 111, D("10.00") * count, "seed", 2)
    for oid in range(1, count + 1):
        place_order(engine, NewOrder(oid, 111, provider, str(7000 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    with engine.begin() as conn:
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))


def seed_orders(engine, ids, provider: str) -> None:
    """More orders of user 111 (paid for by their own deposit)."""
    ids = list(ids)
    deposit(engine, 111, D("10.00") * len(ids), f"seed-{provider}", 2)
    for oid in ids:
        place_order(engine, NewOrder(oid, 111, provider, str(7000 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    with engine.begin() as conn:
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))


def one_shard(engine):
    [shard] = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    return shard


def order_rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(orders).order_by(orders.c.id)).all()


@pytest.fixture
def context(settings):
    ctx = build_context(settings, process_metrics())
    yield ctx
    ctx.close()


def assert_deferred(engine, at_least: timedelta) -> None:
    """Every order is open, free of leases and not due before ``at_least`` from now."""
    soon = utcnow() + at_least - timedelta(seconds=2)
    for row in order_rows(engine):
        assert row.status == "Pending" and row.observed_at is None
        assert row.lease_token is None and row.lease_until is None
        assert row.next_check_at > soon, (row.id, row.next_check_at)


def test_a_shard_of_an_unconfigured_provider_is_deferred_without_a_call(engine, context,
                                                                        simulator):
    seed(engine, 3, provider="nowhere")
    shard = one_shard(engine)
    result = run_shard(context, "nowhere", shard.order_ids, shard.token)
    assert result.pop("finished_at") <= time.time()
    assert result == {"provider": "nowhere", "checked": 0,
                      "skipped": "provider not configured"}
    assert simulator.stats()["status_requests"] == 0
    assert_deferred(engine, timedelta(seconds=context.settings.poll_interval))


def test_an_open_circuit_defers_the_shard_without_a_call(engine, context, simulator):
    seed(engine, 3)
    for _ in range(context.breaker.threshold):
        context.breaker.record_failure("sim")
    shard = one_shard(engine)
    result = run_shard(context, "sim", shard.order_ids, shard.token)
    assert result["skipped"] == "circuit open" and result["checked"] == 0
    assert simulator.stats()["status_requests"] == 0
    assert_deferred(engine, timedelta(seconds=context.breaker.cooldown))


def test_a_spent_rate_limit_defers_the_shard_without_a_call(engine, settings, simulator):
    seed(engine, 3)
    ctx = build_context(settings.with_overrides(provider_rate_limit_per_min=0),
                        process_metrics())
    try:
        shard = one_shard(engine)
        result = run_shard(ctx, "sim", shard.order_ids, shard.token)
    finally:
        ctx.close()
    assert result["skipped"] == "rate limited" and result["checked"] == 0
    assert simulator.stats()["status_requests"] == 0
    assert_deferred(engine, timedelta(seconds=1))


def test_a_shard_whose_lease_another_token_took_checks_nothing(engine, context, simulator):
    seed(engine, 3)
    shard = one_shard(engine)
    with engine.begin() as conn:  # the lease ran out and another tick took the orders
        conn.execute(update(orders).values(lease_token="other-token"))
    for oid in range(1, 4):
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    result = run_shard(context, "sim", shard.order_ids, shard.token)
    assert result["checked"] == 0 and result["skipped"] == "lease lost or orders closed"
    assert simulator.stats()["status_requests"] == 0
    rows = order_rows(engine)
    assert {row.lease_token for row in rows} == {"other-token"}  # left to their holder
    assert {row.status for row in rows} == {"Pending"}


def test_a_checked_shard_counts_what_it_checked_and_changed_and_releases(engine, context,
                                                                         simulator):
    seed(engine, 4)
    simulator.set_order(7001, status="Canceled", remains=0)
    simulator.set_order(7002, status="Partial", remains=250)
    simulator.set_order(7003, status="Pending", remains=1000)  # 7004: unknown to the provider
    shard = one_shard(engine)
    result = run_shard(context, "sim", shard.order_ids, shard.token)
    assert {k: result[k] for k in ("provider", "checked", "changed", "no_answer", "unknown")} == {
        "provider": "sim", "checked": 4, "changed": 2, "no_answer": 1, "unknown": 0}
    assert sorted(c.order_id for c in result["report"].changes) == [1, 2]
    assert simulator.stats()["status_requests"] == 1
    rows = order_rows(engine)
    assert [row.status for row in rows] == ["Canceled", "Partial", "Pending", "Pending"]
    assert all(row.lease_token is None and row.observed_at is not None for row in rows)
    assert get_balance(engine, 111) == D("10.00") + D("2.50")


def test_a_failing_provider_defers_the_shard_outside_rq_and_re_raises(engine, context,
                                                                      simulator):
    seed(engine, 3)
    simulator.faults(error_rate=1.0)
    shard = one_shard(engine)
    with pytest.raises(ProviderUnavailable):
        run_shard(context, "sim", shard.order_ids, shard.token)
    assert simulator.stats()["status_requests"] >= 1
    assert_deferred(engine, timedelta(seconds=context.settings.poll_interval))
    assert int(context.redis.hget(context.breaker.keys.circuit("sim"), "failures")) == 1


def test_a_job_of_several_shards_has_their_calls_in_flight_at_once(engine, context, simulator):
    seed(engine, 400)
    for oid in (5, 205, 399):
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    simulator.faults(latency_ms=300)
    shards = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    assert len(shards) == 4
    simulator.stats_reset()
    results = run_shards(context, [(s.provider, s.order_ids, s.token) for s in shards])
    stats = simulator.stats()
    assert stats["status_requests"] == 4 and stats["max_in_flight"] == 4
    assert [r["checked"] for r in results] == [100] * 4
    assert sum(r["changed"] for r in results) == 3
    assert get_balance(engine, 111) == D("30.00")  # 4000 deposited - 4000 charged + 3 refunds
    assert all(row.lease_token is None for row in order_rows(engine))


def test_one_failing_provider_fails_the_job_after_the_other_shards_are_applied(
        engine, settings, simulator):
    down = ProviderConfig("down", f"http://127.0.0.1:{free_port()}/api/v2", "k")
    context = build_context(settings.with_overrides(
        providers={**settings.providers, "down": down}), process_metrics())
    seed(engine, 150)
    seed_orders(engine, range(151, 161), provider="down")
    simulator.set_order(7001, status="Canceled", remains=0)
    shards = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    assert sorted(s.provider for s in shards) == ["down", "sim", "sim"]
    with pytest.raises(ProviderUnavailable):
        run_shards(context, [(s.provider, s.order_ids, s.token) for s in shards])
    rows = {row.id: row for row in order_rows(engine)}
    assert rows[1].status == "Canceled" and get_balance(engine, 111) == D("10.00")
    assert all(rows[oid].lease_token is None for oid in range(1, 151))   # applied, released
    # outside RQ every run is the last: the failed shard's orders wait for the next interval
    later = utcnow() + timedelta(seconds=20)
    assert all(rows[oid].lease_token is None and rows[oid].next_check_at > later
               for oid in range(151, 161))
    # the job run again: every shard finds its leases released and calls nobody
    again = run_shards(context, [(s.provider, s.order_ids, s.token) for s in shards])
    assert {r.get("skipped") for r in again} == {"lease lost or orders closed"}
    context.close()
    assert simulator.stats()["status_requests"] == 2  # no sim shard called twice


def test_a_slow_provider_holds_up_no_other_shard_of_its_job(engine, settings, simulator):
    from providers.simulator import create_simulator_app
    from tests.support import ServerThread, SimulatorHandle

    slow_server = ServerThread(lambda: create_simulator_app("k", seed=1, auto_advance=False))
    slow_server.start()
    slow = SimulatorHandle(slow_server.url, "k")
    context = build_context(settings.with_overrides(providers={
        **settings.providers, "slow": ProviderConfig("slow", slow.api_url, "k")}),
        process_metrics())
    try:
        seed(engine, 10)
        seed_orders(engine, range(11, 21), provider="slow")
        simulator.set_order(7001, status="Canceled", remains=0)
        slow.set_order(7011, status="Canceled", remains=0)
        slow.faults(latency_ms=2500)
        shards = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
        run_shards(context, [(s.provider, s.order_ids, s.token) for s in shards])
    finally:
        context.close()
        slow_server.stop()
    rows = {row.id: row for row in order_rows(engine)}
    assert rows[1].status == rows[11].status == "Canceled"
    # the fast provider's reply was applied while the slow one's call was still in flight
    assert (rows[11].updated_at - rows[1].updated_at).total_seconds() > 1.5
    # and its event marked published then, not at the job's end (the sweeper would have
    # published it again after 2 s)
    from paxyo.store.schema import outbox

    with engine.connect() as conn:
        event = conn.execute(select(outbox).where(outbox.c.type == "order.updated")
                             .order_by(outbox.c.id.desc()).limit(2)).all()
    fast = next(e for e in event if orjson.loads(e.payload)["order_id"] == 1)
    assert fast.published_at is not None
    assert (fast.published_at - fast.created_at).total_seconds() < 1.5


def test_a_jobs_events_are_published_once_and_marked_in_its_own_later_writes(
        engine, context, simulator, monkeypatch):
    """Each shard's events are marked published in the job's next apply, the last shard's
    at the job's end: five write transactions after the claim for four shards with changes,
    not eight (the half-second timer is set long here, so that a slow machine cannot fire it)."""
    from sqlalchemy import event, func

    from paxyo.store.schema import outbox

    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 60.0)
    seed(engine, 400)
    with engine.begin() as conn:  # the seed's own events are not this job's
        conn.execute(update(outbox).values(published_at=utcnow()))
        before = conn.execute(select(func.max(outbox.c.id))).scalar()
    for oid in (5, 105, 205, 399):
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    shards = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    commits = []

    def committed(conn) -> None:
        commits.append(conn)

    event.listen(context.engine, "commit", committed)
    try:
        results = run_shards(context, [(s.provider, s.order_ids, s.token) for s in shards])
    finally:
        event.remove(context.engine, "commit", committed)
    assert sum(r["changed"] for r in results) == 4
    assert len(commits) == 1 + 4 + 1  # claim, one apply per shard, the last shard's marks
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.published_at)
                            .where(outbox.c.id > before)).all()
    assert len(rows) == 4 and all(r.published_at is not None for r in rows)
    stream = context.redis.xrange(context.relay.config.keys.events)
    assert sorted(int(fields[b"i"]) for _, fields in stream) == sorted(r.id for r in rows)
