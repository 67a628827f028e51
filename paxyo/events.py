"""Outbox events: written in the same transaction as the change they describe.

An event's id is its outbox row id, zero-padded so that ids also sort as strings. The stored
payload omits ``type`` and ``id``; :func:`event_bytes` renders the exact bytes every consumer
receives, so the same event is always the same bytes wherever it is delivered from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Row

from paxyo.clock import iso_z, utcnow
from paxyo.ledger import lock_balances
from paxyo.money import format_money
from paxyo.store.schema import outbox, webhook_deliveries

ORDER_UPDATED = "order.updated"
BALANCE_UPDATED = "balance.updated"
WEBHOOK_PENDING = "pending"  # a webhook_deliveries row still to send
# next_attempt_at of a user's pending row behind the first one: it waits for that one, and the
# search for due rows does not read it (paxyo.webhook_queue gives it a time when it comes first)
WEBHOOK_BEHIND = datetime(9999, 1, 1)
ID_WIDTH = 16
MAX_ID = 2**63 - 1  # the largest outbox id a BIGINT column holds
_INSERT_EVENT = insert(outbox)  # built once: it runs for every change
_INSERT_EVENTS = insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True)
_INSERT_WEBHOOK = insert(webhook_deliveries)
# Built once: these run for every reply with changes.
_UNPUBLISHED_OF_USERS = (
    select(outbox)
    .where(outbox.c.published_at.is_(None),
           outbox.c.user_id.in_(select(outbox.c.user_id).where(
               outbox.c.id.in_(bindparam("p_ids", expanding=True)))),
           outbox.c.id <= bindparam("p_max"))
    .order_by(outbox.c.id))
_MARK_PUBLISHED = (update(outbox)
                   .where(outbox.c.id.in_(bindparam("p_ids", expanding=True)),
                          outbox.c.published_at.is_(None))
                   .values(published_at=bindparam("p_now")))
_PENDING_WEBHOOK_USERS = (
    select(webhook_deliveries.c.user_id).distinct()
    .where(webhook_deliveries.c.user_id.in_(bindparam("p_uids", expanding=True)),
           webhook_deliveries.c.state == WEBHOOK_PENDING))


def event_id(outbox_id: int) -> str:
    return str(outbox_id).zfill(ID_WIDTH)


def parse_event_id(value: str) -> int | None:
    """The outbox id behind an event id, or None when it is not one of ours."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 20:  # ASCII only
        return None
    number = int(value)
    return number if number <= MAX_ID else None  # a BIGINT (SQLite: INTEGER) holds it


@dataclass(frozen=True, slots=True)
class PendingEvent:
    outbox_id: int
    user_id: int

    @property
    def id(self) -> str:
        return event_id(self.outbox_id)


def record_event(conn: Connection, user_id: int, type_: str, body: dict[str, Any],
                 at: datetime, *, webhook: bool = False) -> PendingEvent:
    """Insert an outbox row for ``body`` (without type and id) in the caller's transaction.

    With ``webhook`` (PAXYO_WEBHOOK_URL is set) the event is also queued for webhook delivery
    (:mod:`paxyo.webhook_queue`), in the same transaction, so that none is ever lost. Queuing
    locks the user's account row (as every change with an event does already): the sender
    takes it too when a user's first event leaves the queue, so that the event queued behind
    it is always seen and brought forward.
    """
    result = conn.execute(_INSERT_EVENT, _event_row(user_id, type_, body, at))
    event = PendingEvent(outbox_id=int(result.inserted_primary_key[0]), user_id=user_id)
    if webhook:
        _queue_webhooks(conn, [event], at)
    return event


def record_events(conn: Connection, events: Sequence[tuple[int, str, dict[str, Any]]],
                  at: datetime, *, webhook: bool = False) -> list[PendingEvent]:
    """:func:`record_event` for several ``(user_id, type, body)`` at once, in one multi-row
    INSERT whose ids come back in the given order (RETURNING; MySQL, which has none, gets an
    INSERT per event). A user's events get ascending ids in the order given."""
    if not events:
        return []
    if not conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        return [record_event(conn, uid, type_, body, at, webhook=webhook)
                for uid, type_, body in events]
    rows = conn.execute(_INSERT_EVENTS, [_event_row(uid, type_, body, at)
                                         for uid, type_, body in events]).all()
    recorded = [PendingEvent(outbox_id=int(row.id), user_id=uid)
                for row, (uid, _, _) in zip(rows, events, strict=True)]
    if webhook:
        _queue_webhooks(conn, recorded, at)
    return recorded


def unpublished_rows(conn: Connection, outbox_ids: Sequence[int]) -> list[Row]:
    """The rows to publish after the transaction that wrote ``outbox_ids`` commits: those,
    and every earlier row of the same users still unpublished, in id order.

    Events must reach Redis in id order per user, or a client resuming from a later id would
    never be sent an earlier one. A user's events get their ids under that user's account
    lock, so an earlier one has committed before a later one exists, and it is marked
    published only once Redis holds it. Read in the writing transaction (the worker does, under
    the account locks) or after it.
    """
    if not outbox_ids:
        return []
    return conn.execute(_UNPUBLISHED_OF_USERS, {"p_ids": list(outbox_ids),
                                                "p_max": max(outbox_ids)}).all()


def mark_published(conn: Connection, outbox_ids: Sequence[int]) -> None:
    """Mark rows that Redis holds as published, in the caller's transaction."""
    if outbox_ids:
        conn.execute(_MARK_PUBLISHED, {"p_ids": list(outbox_ids), "p_now": utcnow()})


def _event_row(user_id: int, type_: str, body: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"user_id": user_id, "type": type_, "payload": orjson.dumps({**body, "at": iso_z(at)}),
            "created_at": at}


def _queue_webhooks(conn: Connection, events: Sequence[PendingEvent], at: datetime) -> None:
    """A webhook row per event: due now when it is its user's first pending one, otherwise
    behind the one before it (see paxyo.webhook_queue)."""
    users = sorted({e.user_id for e in events})
    lock_balances(conn, users)  # held already by every caller: costs nothing more
    behind = {row.user_id for row in conn.execute(_PENDING_WEBHOOK_USERS, {"p_uids": users})}
    rows = []
    for event in sorted(events, key=lambda e: e.outbox_id):
        rows.append({"event_id": event.outbox_id, "user_id": event.user_id,
                     "state": WEBHOOK_PENDING, "attempts": 0,
                     "next_attempt_at": WEBHOOK_BEHIND if event.user_id in behind else at})
        behind.add(event.user_id)
    conn.execute(_INSERT_WEBHOOK, rows)


def event_bytes(outbox_id: int, type_: str, payload: bytes) -> bytes:
    """The event exactly as clients see it: ``{"type":..,"id":..,<payload>}``."""
    head = orjson.dumps({"type": type_, "id": event_id(outbox_id)})
    if payload == b"{}":
        return head
    return head[:-1] + b"," + payload[1:]


def order_event_body(*, order_id: int, user_id: int, status: str, previous_status: str | None,
                     remains: int | None, quantity: int, refund: Decimal, balance: Decimal,
                     decimals: int) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "user_id": user_id,
        "status": status,
        "previous_status": previous_status,
        "remains": remains,
        "quantity": quantity,
        "refund": format_money(refund, decimals),
        "balance": format_money(balance, decimals),
    }


def balance_event_body(*, user_id: int, amount: Decimal, balance: Decimal, reason: str,
                       reference: str | None, decimals: int) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "reason": reason,
        "amount": format_money(amount, decimals),
        "reference": reference,
        "balance": format_money(balance, decimals),
    }
