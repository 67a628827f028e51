"""paxyo.leases on a fixed clock: lease, claim, defer, release; every call names its ``now``."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from paxyo.accounts import deposit
from paxyo.leases import claim, claim_all, defer, lease, release
from paxyo.orders import NewOrder, place_order
from paxyo.store.engine import transactional
from paxyo.store.schema import orders

NOW = datetime(2026, 11, 30, 12, 0, 0)
UNTIL = NOW + timedelta(seconds=60)
D = Decimal


@pytest.fixture
def ten(engine):
    deposit(engine, 111, D("100.00"), "seed", 2)
    for oid in range(1, 11):
        place_order(engine, NewOrder(oid, 111, "sim", str(500 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    return engine


def take(engine, ids, now=NOW, until=UNTIL):
    return transactional(engine, lambda conn: lease(conn, list(ids), now, until))


def rows(engine):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(orders).order_by(orders.c.id))}


def test_lease_takes_only_free_open_orders_under_a_new_token(ten):
    with ten.begin() as conn:
        conn.execute(update(orders).where(orders.c.id == 3).values(status_class="completed"))
    token, leased = take(ten, range(1, 6))
    assert leased == (1, 2, 4, 5)
    other, again = take(ten, range(1, 8))
    assert again == (6, 7) and other != token
    state = rows(ten)
    assert {state[i].lease_token for i in (1, 2, 4, 5)} == {token}
    assert state[1].lease_until == UNTIL and state[3].lease_token is None


def test_an_expired_lease_is_taken_again_and_a_live_one_is_not(ten):
    token, _ = take(ten, range(1, 4))
    assert take(ten, range(1, 4), now=UNTIL - timedelta(seconds=1))[1] == ()
    later = UNTIL + timedelta(seconds=1)
    other, leased = take(ten, range(1, 4), now=later, until=later + timedelta(seconds=60))
    assert leased == (1, 2, 3) and other != token
    assert claim(ten, token, later, 60) == {}  # the old holder lost them


def test_claim_extends_only_its_own_tokens_open_orders(ten):
    mine, _ = take(ten, range(1, 4))
    theirs, _ = take(ten, range(4, 7))
    with ten.begin() as conn:
        conn.execute(update(orders).where(orders.c.id == 3).values(status_class="canceled"))
    at = NOW + timedelta(seconds=10)
    refs = claim(ten, mine, at, 300)
    assert refs == {1: "501", 2: "502"}  # not 3 (closed), not 4..6 (another token)
    state = rows(ten)
    assert state[1].lease_until == at + timedelta(seconds=300)
    assert state[4].lease_until == UNTIL and state[4].lease_token == theirs
    assert state[7].lease_token is None and state[7].lease_until is None


def test_defer_releases_the_shard_and_reschedules_it(ten):
    token, _ = take(ten, range(1, 4))
    before = rows(ten)
    due = NOW + timedelta(seconds=45)
    defer(ten, token, due)
    state = rows(ten)
    for oid in (1, 2, 3):
        assert (state[oid].lease_token, state[oid].lease_until) == (None, None)
        assert state[oid].next_check_at == due
    assert state[4].next_check_at == before[4].next_check_at
    assert take(ten, range(1, 4))[1] == (1, 2, 3)


def test_release_runs_in_the_callers_transaction(ten):
    token, _ = take(ten, range(1, 4))
    with pytest.raises(RuntimeError), ten.begin() as conn:
        release(conn, token)
        raise RuntimeError("the apply step failed")
    assert {rows(ten)[i].lease_token for i in (1, 2, 3)} == {token}  # rolled back with it
    with ten.begin() as conn:
        release(conn, token)
    assert {rows(ten)[i].lease_token for i in (1, 2, 3)} == {None}


def test_claim_all_claims_a_jobs_shards_in_one_go_each_by_its_own_token(ten):
    first, _ = take(ten, range(1, 4))
    second, _ = take(ten, range(4, 7))
    lost, _ = take(ten, range(7, 9))
    taker, _ = take(ten, range(7, 9), now=UNTIL + timedelta(seconds=1),
                    until=UNTIL + timedelta(seconds=90))  # the lease of `lost` expired
    at = NOW + timedelta(seconds=5)
    held = claim_all(ten, [first, second, lost], at, 120)
    assert held == {first: {1: "501", 2: "502", 3: "503"},
                    second: {4: "504", 5: "505", 6: "506"}, lost: {}}
    state = rows(ten)
    assert all(state[oid].lease_until == at + timedelta(seconds=120) for oid in range(1, 7))
    assert state[7].lease_token == taker and state[7].lease_until == UNTIL + timedelta(seconds=90)


def test_leased_orders_fall_due_when_their_lease_ends_and_not_before(ten):
    from dispatcher.planner import due_orders

    with ten.begin() as conn:
        conn.execute(update(orders).values(next_check_at=NOW - timedelta(seconds=5)))
    token, _ = take(ten, range(1, 5))
    assert {r.next_check_at for oid, r in rows(ten).items() if oid <= 4} == {UNTIL}
    assert [oid for _, oid in due_orders(ten, NOW, 100)] == [5, 6, 7, 8, 9, 10]
    at = NOW + timedelta(seconds=10)
    claim(ten, token, at, 300)  # a worker runs the shard: held until at + 300
    assert rows(ten)[1].next_check_at == UNTIL  # only the lease is extended (no index holds it)
    assert 1 not in {oid for _, oid in due_orders(ten, UNTIL + timedelta(seconds=1), 100)}
    later = at + timedelta(seconds=301)  # the worker was killed: the orders are due again
    assert [oid for _, oid in due_orders(ten, later, 100)][:4] == [5, 6, 7, 8]
    assert {1, 2, 3, 4} <= {oid for _, oid in due_orders(ten, later, 100)}


def _lease_index_rows(conn, dialect: str) -> int | None:
    """Entries in ix_orders_lease where the database can say (None elsewhere)."""
    if dialect == "sqlite":
        return conn.exec_driver_sql(
            "SELECT count(*) FROM orders INDEXED BY ix_orders_lease "
            "WHERE lease_token IS NOT NULL").scalar()
    return None


def test_the_lease_index_holds_only_leased_orders_and_serves_the_token_lookups(any_engine):
    """Migration 0005: partial on SQLite and PostgreSQL (an order's lease costs one index
    insert and one delete, not four writes among a NULL per order); whole on MySQL."""
    engine, dialect = any_engine, any_engine.dialect.name
    deposit(engine, 111, D("100.00"), "seed", 2)
    for oid in range(1, 21):
        place_order(engine, NewOrder(oid, 111, "sim", str(500 + oid), 1000, D("1.00")),
                    decimals=2, poll_interval=30)
    token, leased = take(engine, range(1, 6))
    assert leased == (1, 2, 3, 4, 5)
    with engine.connect() as conn:
        if dialect == "sqlite":
            definition = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_orders_lease'").scalar()
            plan = " ".join(str(r) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM orders WHERE lease_token IN (?, ?)",
                (token, "x")))
            assert _lease_index_rows(conn, dialect) == 5
        elif dialect == "postgresql":
            definition = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_orders_lease'").scalar()
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.exec_driver_sql(
                "EXPLAIN SELECT id FROM orders WHERE lease_token IN (%(a)s, %(b)s)",
                {"a": token, "b": "x"}))
        else:  # MySQL: the whole index, among the candidates for the lookup
            definition = " ".join(str(r) for r in conn.exec_driver_sql(
                "SHOW INDEX FROM orders WHERE Key_name = 'ix_orders_lease'"))
            plan = " ".join(str(r) for r in conn.exec_driver_sql(
                "EXPLAIN SELECT id FROM orders WHERE lease_token IN (%s, %s)", (token, "x")))
    assert "lease_token" in definition
    assert ("WHERE" in definition.upper()) == (dialect != "mysql"), definition
    assert "ix_orders_lease" in plan, plan
    release_all = transactional(engine, lambda conn: release(conn, token))
    assert release_all is None
    with engine.connect() as conn:
        assert _lease_index_rows(conn, dialect) in (0, None)
        assert conn.execute(select(orders.c.id).where(
            orders.c.lease_token.is_not(None))).all() == []
