"""Accounts and their ledger: the only way a balance changes.

Every credit or debit is a ledger entry with a unique idempotency key, written in the same
transaction as the balance it changes. Invariant: balance == sum(ledger amounts), always.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from paxyo.limits import MONEY_LIMIT
from paxyo.money import ZERO
from paxyo.store.schema import accounts, ledger_entries


class EntryKind(enum.StrEnum):
    DEPOSIT = "deposit"
    CHARGE = "charge"
    REFUND = "refund"


class InsufficientBalance(Exception):
    def __init__(self, balance: Decimal, needed: Decimal) -> None:
        super().__init__(f"insufficient balance: {balance} available, {needed} needed")
        self.balance = balance
        self.needed = needed


class BalanceLimitExceeded(Exception):
    """An entry whose amount, or the balance it would leave, is not below MONEY_LIMIT."""

    def __init__(self, balance: Decimal, amount: Decimal) -> None:
        super().__init__(f"the balance must stay below {MONEY_LIMIT:,}: "
                         f"{balance.normalize():f} and {abs(amount).normalize():f} would not")
        self.balance = balance
        self.amount = amount


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    user_id: int
    kind: str
    amount: Decimal
    idempotency_key: str
    order_id: int | None
    reference: str | None


def ensure_account(conn: Connection, user_id: int, now: datetime) -> None:
    """Create the account with a zero balance unless it exists (race-free on every dialect)."""
    values = {"user_id": user_id, "balance": ZERO, "created_at": now, "updated_at": now}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(accounts).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(accounts).values(**values).on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        stmt = mysql.insert(accounts).values(**values).prefix_with("IGNORE")
    else:  # pragma: no cover - only the three dialects above are supported
        raise RuntimeError(f"unsupported database dialect {dialect}")
    conn.execute(stmt)


# Built once: money statements run for every change, and constructing SQLAlchemy statements
# costs more CPU than executing them.
_LOCK_BALANCE = (select(accounts.c.balance).where(accounts.c.user_id == bindparam("p_uid"))
                 .with_for_update())
_LOCK_BALANCES = (select(accounts.c.user_id, accounts.c.balance)
                  .where(accounts.c.user_id.in_(bindparam("p_uids", expanding=True)))
                  .order_by(accounts.c.user_id).with_for_update())
_INSERT_ENTRY = insert(ledger_entries)
_SET_BALANCE = (update(accounts).where(accounts.c.user_id == bindparam("p_uid"))
                .values(balance=bindparam("p_balance"), updated_at=bindparam("p_now")))


def lock_balance(conn: Connection, user_id: int) -> Decimal | None:
    """The account's balance with its row locked until commit; None if there is no account."""
    row = conn.execute(_LOCK_BALANCE, {"p_uid": user_id}).first()
    return None if row is None else Decimal(row.balance)


def lock_balances(conn: Connection, user_ids: Iterable[int]) -> dict[int, Decimal]:
    """:func:`lock_balance` for several accounts, locked in ascending user id (the order
    every caller that locks more than one account uses); an id without an account is left
    out."""
    rows = conn.execute(_LOCK_BALANCES, {"p_uids": sorted(set(user_ids))})
    return {uid: Decimal(balance) for uid, balance in rows}


def find_entry(conn: Connection, idempotency_key: str) -> LedgerEntry | None:
    row = conn.execute(
        select(ledger_entries).where(ledger_entries.c.idempotency_key == idempotency_key)
    ).first()
    if row is None:
        return None
    return LedgerEntry(row.user_id, row.kind, Decimal(row.amount), row.idempotency_key,
                       row.order_id, row.reference)


def post_entry(conn: Connection, *, balance: Decimal, entry: LedgerEntry, now: datetime,
               allow_negative: bool = False) -> Decimal:
    """Write ``entry`` and move the (already locked) balance by its amount; returns the new one.

    A duplicate idempotency key violates the unique index and aborts the transaction: the
    last line of defence against a double credit. A deposit or charge whose amount is not below
    MONEY_LIMIT, or that would move the balance out to MONEY_LIMIT or beyond, raises
    :class:`BalanceLimitExceeded` before anything is written. A refund is exempt: it returns
    money this account was charged, and refusing it would leave its order unsettled for ever.
    """
    new_balance = _moved(balance, entry, allow_negative)
    conn.execute(_INSERT_ENTRY, _entry_row(entry, now))
    conn.execute(_SET_BALANCE, {"p_uid": entry.user_id, "p_balance": new_balance, "p_now": now})
    return new_balance


def post_entries(conn: Connection, *, balances: dict[int, Decimal],
                 entries: Sequence[LedgerEntry], now: datetime) -> list[Decimal]:
    """:func:`post_entry` for many entries at once: two multi-row statements in all.

    ``balances`` holds each entry's account balance, already locked; it is updated in place,
    entry by entry, with the same checks. Returns the balance after each entry.
    """
    after = [_moved_in(balances, entry) for entry in entries]
    if entries:
        conn.execute(_INSERT_ENTRY, [_entry_row(entry, now) for entry in entries])
        conn.execute(_SET_BALANCE, [{"p_uid": uid, "p_balance": balances[uid], "p_now": now}
                                    for uid in dict.fromkeys(e.user_id for e in entries)])
    return after


def _moved_in(balances: dict[int, Decimal], entry: LedgerEntry) -> Decimal:
    balances[entry.user_id] = _moved(balances[entry.user_id], entry, False)
    return balances[entry.user_id]


def _moved(balance: Decimal, entry: LedgerEntry, allow_negative: bool) -> Decimal:
    """The balance after ``entry``, or the reason it may not be written."""
    new_balance = balance + entry.amount
    if new_balance < 0 and not allow_negative:
        raise InsufficientBalance(balance, -entry.amount)
    if entry.kind != EntryKind.REFUND and (
            abs(entry.amount) >= MONEY_LIMIT
            or (abs(new_balance) >= MONEY_LIMIT and abs(new_balance) > abs(balance))):
        raise BalanceLimitExceeded(balance, entry.amount)
    return new_balance


def _entry_row(entry: LedgerEntry, now: datetime) -> dict[str, object]:
    return {"user_id": entry.user_id, "kind": entry.kind, "amount": entry.amount,
            "idempotency_key": entry.idempotency_key, "order_id": entry.order_id,
            "reference": entry.reference, "created_at": now}


def read_balance(conn: Connection, user_id: int) -> Decimal | None:
    row = conn.execute(select(accounts.c.balance).where(accounts.c.user_id == user_id)).first()
    return None if row is None else Decimal(row.balance)


def ledger_mismatches(conn: Connection) -> list[tuple[int, Decimal, Decimal]]:
    """Accounts whose balance differs from the sum of their ledger: should always be empty."""
    sums = (select(ledger_entries.c.user_id, func.sum(ledger_entries.c.amount).label("total"))
            .group_by(ledger_entries.c.user_id).subquery())
    rows = conn.execute(
        select(accounts.c.user_id, accounts.c.balance, func.coalesce(sums.c.total, 0))
        .select_from(accounts.outerjoin(sums, sums.c.user_id == accounts.c.user_id))
    ).all()
    return [(uid, Decimal(bal), Decimal(total)) for uid, bal, total in rows
            if Decimal(bal) != Decimal(total)]
