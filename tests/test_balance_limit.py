"""Balances stay below paxyo.limits.MONEY_LIMIT: the ledger refuses what would reach it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.ledger import (
    BalanceLimitExceeded,
    EntryKind,
    LedgerEntry,
    ledger_mismatches,
    lock_balance,
    post_entry,
)
from paxyo.limits import MONEY_LIMIT
from paxyo.store.engine import transactional

D = Decimal
TOP = MONEY_LIMIT - D("0.01")


def _post(engine, kind: EntryKind, amount: Decimal, key: str) -> Decimal:
    def run(conn):
        balance = lock_balance(conn, 111)
        return post_entry(conn, balance=balance, now=utcnow(),
                          entry=LedgerEntry(111, kind, amount, key, None, None))
    return transactional(engine, run)


def _consistent(engine) -> None:
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def test_a_deposit_may_not_lift_a_balance_to_the_limit(any_engine) -> None:
    assert deposit(any_engine, 111, TOP, "a", 2).balance == TOP
    with pytest.raises(BalanceLimitExceeded, match="below"):
        deposit(any_engine, 111, D("0.01"), "b", 2)
    assert get_balance(any_engine, 111) == TOP
    _consistent(any_engine)


def test_an_amount_at_the_limit_is_refused_on_an_empty_account(any_engine) -> None:
    with pytest.raises(BalanceLimitExceeded):
        deposit(any_engine, 111, MONEY_LIMIT, "a", 2)
    assert get_balance(any_engine, 111) in (None, D(0))
    with pytest.raises(BalanceLimitExceeded):
        deposit(any_engine, 111, MONEY_LIMIT * 10**6, "b", 2)  # beyond SQLite's 64-bit units
    assert get_balance(any_engine, 111) in (None, D(0))
    _consistent(any_engine)


def test_a_refund_is_never_refused_and_a_charge_may_then_lower_the_balance(any_engine) -> None:
    deposit(any_engine, 111, TOP, "a", 2)
    _post(any_engine, EntryKind.CHARGE, -TOP, "charge:1")
    deposit(any_engine, 111, TOP, "b", 2)
    assert _post(any_engine, EntryKind.REFUND, TOP, "refund:1:x") == TOP * 2
    assert _post(any_engine, EntryKind.CHARGE, D("-5.00"), "charge:2") == TOP * 2 - 5
    with pytest.raises(BalanceLimitExceeded):
        deposit(any_engine, 111, D("0.01"), "c", 2)
    assert get_balance(any_engine, 111) == TOP * 2 - 5
    _consistent(any_engine)
