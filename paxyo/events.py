"""Outbox events: written in the same transaction as the change they describe.

An event's id is its outbox row id, zero-padded so that ids also sort as strings. The stored
payload omits ``type`` and ``id``; :func:`event_bytes` renders the exact bytes every consumer
receives, so the same event is always the same bytes wherever it is delivered from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from paxyo.clock import iso_z
from paxyo.ledger import lock_balance
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
_INSERT_WEBHOOK = insert(webhook_deliveries)
_ANY_PENDING_WEBHOOK = (select(webhook_deliveries.c.event_id)
                        .where(webhook_deliveries.c.user_id == bindparam("p_uid"),
                               webhook_deliveries.c.state == WEBHOOK_PENDING).limit(1))


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
    payload = orjson.dumps({**body, "at": iso_z(at)})
    result = conn.execute(_INSERT_EVENT, {"user_id": user_id, "type": type_, "payload": payload,
                                          "created_at": at})
    outbox_id = int(result.inserted_primary_key[0])
    if webhook:
        lock_balance(conn, user_id)  # held already by every caller: costs nothing more
        behind = conn.execute(_ANY_PENDING_WEBHOOK, {"p_uid": user_id}).first() is not None
        conn.execute(_INSERT_WEBHOOK, {"event_id": outbox_id, "user_id": user_id,
                                       "state": WEBHOOK_PENDING, "attempts": 0,
                                       "next_attempt_at": WEBHOOK_BEHIND if behind else at})
    return PendingEvent(outbox_id=outbox_id, user_id=user_id)


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
