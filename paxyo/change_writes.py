"""Writing a reply's status changes: each order's status, refund, balance and event together.

:func:`write_changes` writes a whole reply with a handful of multi-row statements, whatever
the number of changes: lock the changed orders (ascending id), lock their users' accounts
(ascending user id, the order every caller that locks several accounts uses), then one
statement each for the ledger entries, the balances, the orders and the outbox rows. The
statements, not the rows, are what cost a worker's CPU. :func:`write_change` is the same for
one change, for the fallback that gives each change its own savepoint (see
paxyo.observations).

Each change is re-checked under its row lock: an order already closed, or observed later by
someone else, is left alone (None), so that a change is applied exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Row

from paxyo.clock import utcnow
from paxyo.events import ORDER_UPDATED, PendingEvent, order_event_body, record_events
from paxyo.leases import lease_ended
from paxyo.ledger import EntryKind, LedgerEntry, lock_balances, post_entries
from paxyo.money import to_money
from paxyo.refunds import refund_target, refund_top_up
from paxyo.schedule import next_check_at
from paxyo.statuses import Status, StatusClass
from paxyo.store.schema import orders

OPEN = StatusClass.OPEN.value

# What a change needs of its order, read under the row lock.
_LOCKED_COLUMNS = (orders.c.id, orders.c.user_id, orders.c.status, orders.c.status_class,
                   orders.c.observed_at, orders.c.remains, orders.c.charge, orders.c.refunded,
                   orders.c.quantity)
# Built once: these run for every reply (statement construction costs more than execution).
_LOCK_ORDERS = (select(*_LOCKED_COLUMNS)
                .where(orders.c.id.in_(bindparam("p_oids", expanding=True)))
                .order_by(orders.c.id).with_for_update())
_SET_STATUS = (
    update(orders)
    .where(orders.c.id == bindparam("p_oid"), orders.c.status == bindparam("p_old_status"),
           orders.c.refunded == bindparam("p_old_refunded"))
    .values(status=bindparam("p_status"), status_class=bindparam("p_class"),
            remains=bindparam("p_remains"), refunded=bindparam("p_refunded"),
            review_status=None, observed_at=bindparam("p_observed"),
            changed_at=bindparam("p_now"), updated_at=bindparam("p_now"),
            next_check_at=bindparam("p_next"), **lease_ended()))

Pending = tuple[int, Status, int | None]  # (order id, new status, remains)


@dataclass(frozen=True, slots=True)
class AppliedChange:
    order_id: int
    user_id: int
    previous_status: str
    status: str
    remains: int | None
    refund: Decimal
    balance: Decimal
    event: PendingEvent


@dataclass(frozen=True, slots=True)
class _Settled:
    """One change worked out against its locked order row, before any write."""

    row: Row
    status: Status
    remains: int | None
    refunded: Decimal  # before this change
    top_up: Decimal


def write_changes(conn: Connection, pending: Sequence[Pending], *, observed_at: datetime,
                  decimals: int, poll_interval: float, webhook: bool,
                  lease_token: str | None = None) -> list[AppliedChange | None]:
    """Write ``pending`` (ordered by user, then order) in a few multi-row statements; one
    result per change, None where the order had moved on. ``lease_token``: the lease of the
    worker's shard, ended on each order written."""
    locked = {row.id: row for row in conn.execute(
        _LOCK_ORDERS, {"p_oids": [order_id for order_id, _, _ in pending]})}
    settled = [_settle(locked.get(order_id), status, remains, observed_at, decimals)
               for order_id, status, remains in pending]
    live = [s for s in settled if s is not None]
    if not live:
        return [None] * len(settled)
    now = utcnow()
    balances = {uid: to_money(balance, decimals) for uid, balance in
                lock_balances(conn, (s.row.user_id for s in live)).items()}
    assert len(balances) == len({s.row.user_id for s in live}), "an order always has an account"
    running = dict(balances)
    after = iter(post_entries(conn, balances=balances, now=now,
                              entries=[_refund_entry(s) for s in live if s.top_up > 0]))
    shown: dict[int, Decimal] = {}  # each event shows the balance as of its own change
    for s in live:
        if s.top_up > 0:
            running[s.row.user_id] = next(after)
        shown[s.row.id] = running[s.row.user_id]
    result = conn.execute(_SET_STATUS, [
        _status_params(s, observed_at, now, poll_interval, lease_token) for s in live])
    if conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(live):
        raise RuntimeError("an order changed under its row lock")
    events = iter(record_events(conn, [
        (s.row.user_id, ORDER_UPDATED, _event_body(s, shown[s.row.id], decimals)) for s in live],
        now, webhook=webhook))
    return [None if s is None else _applied(s, shown[s.row.id], next(events)) for s in settled]


def write_change(conn: Connection, order_id: int, status: Status, remains: int | None, *,
                 observed_at: datetime, decimals: int, poll_interval: float, webhook: bool,
                 lease_token: str | None = None) -> AppliedChange | None:
    """One change alone, for the fallback that gives each change its own savepoint."""
    return write_changes(conn, [(order_id, status, remains)], observed_at=observed_at,
                         decimals=decimals, poll_interval=poll_interval, webhook=webhook,
                         lease_token=lease_token)[0]


def _settle(row: Row | None, status: Status, remains: int | None, observed_at: datetime,
            decimals: int) -> _Settled | None:
    """The change against the order as locked, or None when there is nothing to write."""
    if (row is None or row.status_class != OPEN
            or (row.observed_at is not None and row.observed_at > observed_at)):
        return None  # a concurrent applier got here first
    if status.name == row.status and remains == row.remains:
        return None
    charge, refunded = to_money(row.charge, decimals), to_money(row.refunded, decimals)
    target = refund_target(status.cls, charge, row.quantity, remains, decimals)
    return _Settled(row, status, remains, refunded, refund_top_up(target, refunded, charge))


def _refund_entry(s: _Settled) -> LedgerEntry:
    order_id = s.row.id
    return LedgerEntry(s.row.user_id, EntryKind.REFUND, s.top_up,
                       f"refund:{order_id}:{s.refunded + s.top_up}", order_id, s.status.name)


def _status_params(s: _Settled, observed_at: datetime, now: datetime, poll_interval: float,
                   lease_token: str | None) -> dict[str, Any]:
    return {"p_lease": lease_token, "p_oid": s.row.id, "p_old_status": s.row.status,
            "p_old_refunded": s.row.refunded,
            "p_status": s.status.name, "p_class": s.status.cls.value, "p_remains": s.remains,
            "p_refunded": s.refunded + s.top_up, "p_observed": observed_at, "p_now": now,
            "p_next": next_check_at(now, now, poll_interval)}


def _event_body(s: _Settled, balance: Decimal, decimals: int) -> dict[str, Any]:
    return order_event_body(order_id=s.row.id, user_id=s.row.user_id, status=s.status.name,
                            previous_status=s.row.status, remains=s.remains,
                            quantity=s.row.quantity, refund=s.top_up, balance=balance,
                            decimals=decimals)


def _applied(s: _Settled, balance: Decimal, event: PendingEvent) -> AppliedChange:
    return AppliedChange(s.row.id, s.row.user_id, s.row.status, s.status.name, s.remains,
                         s.top_up, balance, event)
