"""Deposits and account reads."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from paxyo.clock import utcnow
from paxyo.errors import Conflict
from paxyo.events import BALANCE_UPDATED, PendingEvent, balance_event_body, record_event
from paxyo.ledger import (
    EntryKind,
    LedgerEntry,
    ensure_account,
    find_entry,
    lock_balance,
    post_entry,
    read_balance,
)
from paxyo.money import format_money
from paxyo.store.engine import transactional


@dataclass(frozen=True, slots=True)
class DepositResult:
    user_id: int
    balance: Decimal
    created: bool  # False when the reference was already applied (nothing changed)
    event: PendingEvent | None


def deposit(engine: Engine, user_id: int, amount: Decimal, reference: str,
            decimals: int, *, webhook: bool = False) -> DepositResult:
    """Credit ``amount`` once per (user, reference); repeating it changes nothing.

    ``webhook``: also queue the event for webhook delivery (PAXYO_WEBHOOK_URL is set).
    """
    key = f"deposit:{user_id}:{reference}"

    def run(conn: Connection) -> DepositResult:
        now = utcnow()
        ensure_account(conn, user_id, now)
        balance = lock_balance(conn, user_id)
        assert balance is not None
        existing = find_entry(conn, key)
        if existing is not None:
            if existing.amount != amount:
                raise Conflict(f"reference {reference!r} was already used for a deposit of "
                               f"{format_money(existing.amount, decimals)}")
            return DepositResult(user_id, balance, created=False, event=None)
        entry = LedgerEntry(user_id, EntryKind.DEPOSIT, amount, key, None, reference)
        new_balance = post_entry(conn, balance=balance, entry=entry, now=now)
        event = record_event(conn, user_id, BALANCE_UPDATED, balance_event_body(
            user_id=user_id, amount=amount, balance=new_balance, reason="deposit",
            reference=reference, decimals=decimals), now, webhook=webhook)
        return DepositResult(user_id, new_balance, created=True, event=event)

    return transactional(engine, run)


def get_balance(engine: Engine, user_id: int) -> Decimal | None:
    with engine.connect() as conn:
        return read_balance(conn, user_id)
