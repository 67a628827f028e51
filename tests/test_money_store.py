"""Money is stored exactly on every backend, up to the documented limit, and the ledger check
compares to the last digit."""

import random
from decimal import Decimal

import pytest
import sqlalchemy as sa

from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.ledger import ledger_mismatches
from paxyo.limits import MONEY_LIMIT
from paxyo.observations import apply_observations
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade
from paxyo.store.schema import accounts
from providers.replies import StatusEntry

D = Decimal


def _raw_mismatches(conn: sa.Connection) -> list:
    """Balance against SUM(ledger) compared by the database itself, no rounding anywhere."""
    return conn.exec_driver_sql(
        "SELECT a.user_id, a.balance, s.total FROM accounts a JOIN "
        "(SELECT user_id, SUM(amount) AS total FROM ledger_entries GROUP BY user_id) s "
        "ON s.user_id = a.user_id WHERE a.balance <> s.total").all()


@pytest.mark.parametrize("amount", ["116148470.32", "9999999999.99", "0.01", "1234567.89",
                                    "9000000000.01"])
def test_large_amounts_round_trip_exactly(any_engine, amount):
    result = deposit(any_engine, 111, D(amount), "pay-1", 2)
    assert result.balance == D(amount)
    assert get_balance(any_engine, 111) == D(amount)
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        assert _raw_mismatches(conn) == []


def test_eight_decimals_up_to_the_limit_round_trip(any_engine):
    top = MONEY_LIMIT - D("0.00000001")
    deposit(any_engine, 7, top, "top", 8)
    deposit(any_engine, 8, D("0.00000001"), "tiny", 8)
    assert get_balance(any_engine, 7) == top
    assert get_balance(any_engine, 8) == D("0.00000001")


def test_many_deposits_charges_and_refunds_equal_the_ledger_to_the_last_digit(any_engine):
    rng = random.Random(20261130)
    expected: dict[int, Decimal] = {}
    placed: list[NewOrder] = []
    for n in range(60):
        user = 100 + n % 4
        amount = D(rng.randrange(1, 10**11)) / 100   # up to 999,999,999.99
        deposit(any_engine, user, amount, f"dep-{n}", 2)
        expected[user] = expected.get(user, D(0)) + amount
    for n in range(40):
        user = 100 + n % 4
        charge = D(rng.randrange(1, 10**9)) / 100
        quantity = rng.randrange(1, 100_000)
        new = NewOrder(id=5000 + n, user_id=user, provider="sim", provider_order_id=str(n + 1),
                       quantity=quantity, charge=charge)
        place_order(any_engine, new, decimals=2, poll_interval=30)
        expected[user] -= charge
        placed.append(new)
    replies = {}
    for new in placed:
        if rng.random() < 0.5:
            replies[new.provider_order_id] = StatusEntry("Canceled", 0, None, None)
        else:
            remains = rng.randrange(0, new.quantity + 1)
            replies[new.provider_order_id] = StatusEntry("Partial", remains, None, None)
    apply_observations(any_engine, "sim", [o.id for o in placed], replies,
                       observed_at=utcnow(), decimals=2, poll_interval=30)
    for new in placed:
        refunded = D(get_order(any_engine, new.id, 2)["refunded"])
        entry = replies[new.provider_order_id]
        if entry.status == "Canceled":
            assert refunded == new.charge
        else:
            exact = new.charge * entry.remains / new.quantity
            assert refunded == exact.quantize(D("0.01"), rounding="ROUND_DOWN")
        expected[new.user_id] += refunded
    for user, balance in expected.items():
        assert get_balance(any_engine, user) == balance
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        assert _raw_mismatches(conn) == []


def test_ledger_check_sees_a_difference_of_one_smallest_unit(any_engine):
    deposit(any_engine, 111, D("9251.65"), "pay-1", 2)
    with any_engine.begin() as conn:
        conn.execute(sa.update(accounts).values(balance=D("9251.65000001")))
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == [(111, D("9251.65000001"), D("9251.65"))]


def test_upgrade_converts_sqlite_money_stored_as_real(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = open_engine(url)
    now = utcnow()
    old = [(1, 116148470.32), (2, 9251.65000000001), (3, 25), (4, 0.1 + 0.2)]
    with engine.begin() as conn:  # what 0001 wrote: floats through NUMERIC affinity
        for user, balance in old:
            conn.exec_driver_sql(
                "INSERT INTO accounts (user_id, balance, created_at, updated_at) "
                "VALUES (?, ?, ?, ?)", (user, balance, now, now))
            conn.exec_driver_sql(
                "INSERT INTO ledger_entries (user_id, kind, amount, idempotency_key, created_at)"
                " VALUES (?, 'deposit', ?, ?, ?)", (user, balance, f"deposit:{user}:x", now))
    engine.dispose()
    upgrade(url)
    engine = open_engine(url)
    try:
        assert [get_balance(engine, user) for user, _ in old] == [
            D("116148470.32"), D("9251.65"), D("25"), D("0.3")]
        with engine.connect() as conn:
            assert ledger_mismatches(conn) == []
            assert _raw_mismatches(conn) == []
    finally:
        engine.dispose()


def test_references_that_differ_only_in_case_accents_or_trailing_spaces_are_distinct(
        any_engine):
    """MySQL's default collation would call these the same idempotency key and drop a
    deposit; keys compare byte for byte on every store."""
    references = ["abc", "ABC", "abc ", "ábc", "abc\u00a0"]
    for n, reference in enumerate(references):
        result = deposit(any_engine, 111, D("1.00") + n, reference, 2)
        assert result.created, reference
    assert get_balance(any_engine, 111) == D(5 + sum(range(5)))
    again = deposit(any_engine, 111, D("2.00"), "ABC", 2)
    assert not again.created and get_balance(any_engine, 111) == D(15)
