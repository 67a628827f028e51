"""Orders registered by the panel: placement (debits the charge) and reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from paxyo.clock import iso_z, utcnow
from paxyo.errors import Conflict, NotFound
from paxyo.events import ORDER_UPDATED, PendingEvent, order_event_body, record_event
from paxyo.ledger import EntryKind, LedgerEntry, lock_balance, post_entry
from paxyo.money import ZERO, format_money
from paxyo.schedule import first_check_delay
from paxyo.statuses import PENDING
from paxyo.store.engine import transactional
from paxyo.store.schema import orders


@dataclass(frozen=True, slots=True)
class NewOrder:
    id: int
    user_id: int
    provider: str
    provider_order_id: str
    quantity: int
    charge: Decimal
    service: str | None = None
    link: str | None = None

    def request_hash(self) -> str:
        canonical = orjson.dumps({
            "id": self.id, "user_id": self.user_id, "provider": self.provider,
            "provider_order_id": self.provider_order_id, "quantity": self.quantity,
            "charge": str(self.charge), "service": self.service, "link": self.link,
        }, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class PlaceResult:
    order: dict[str, Any]
    created: bool
    event: PendingEvent | None


def place_order(engine: Engine, new: NewOrder, *, decimals: int, poll_interval: float,
                webhook: bool = False) -> PlaceResult:
    """Register an order and debit its charge; the identical request again changes nothing.

    ``webhook``: also queue the event for webhook delivery (PAXYO_WEBHOOK_URL is set).
    """

    def run(conn: Connection) -> PlaceResult:
        now = utcnow()
        existing = _existing(conn, new)
        if existing is not None:
            return PlaceResult(order_view(existing, decimals), created=False, event=None)
        balance = lock_balance(conn, new.user_id)
        existing = _existing(conn, new)  # re-check under the account lock
        if existing is not None:
            return PlaceResult(order_view(existing, decimals), created=False, event=None)
        if balance is None or balance < new.charge:
            raise Conflict(f"insufficient balance: {format_money(balance or ZERO, decimals)} "
                           f"available, {format_money(new.charge, decimals)} needed")
        conn.execute(insert(orders).values(
            id=new.id, user_id=new.user_id, provider=new.provider,
            provider_order_id=new.provider_order_id, service=new.service, link=new.link,
            quantity=new.quantity, charge=new.charge, refunded=ZERO, status=PENDING.name,
            status_class=PENDING.cls.value, remains=new.quantity, review_status=None,
            request_hash=new.request_hash(), created_at=now, updated_at=now,
            observed_at=None, changed_at=now,
            next_check_at=now + timedelta(seconds=first_check_delay(poll_interval)),
            lease_until=None))
        new_balance = post_entry(conn, balance=balance, now=now, entry=LedgerEntry(
            new.user_id, EntryKind.CHARGE, -new.charge, f"charge:{new.id}", new.id, None))
        event = record_event(conn, new.user_id, ORDER_UPDATED, order_event_body(
            order_id=new.id, user_id=new.user_id, status=PENDING.name, previous_status=None,
            remains=new.quantity, quantity=new.quantity, refund=ZERO, balance=new_balance,
            decimals=decimals), now, webhook=webhook)
        row = _load(conn, new.id)
        assert row is not None
        return PlaceResult(order_view(row, decimals), created=True, event=event)

    try:
        return transactional(engine, run)
    except IntegrityError:
        # The same order id was inserted concurrently: the retry sees it and answers.
        return transactional(engine, run)


def _existing(conn: Connection, new: NewOrder) -> Row | None:
    row = _load(conn, new.id)
    if row is not None and row.request_hash != new.request_hash():
        raise Conflict(f"order {new.id} already exists with a different body")
    return row


def _load(conn: Connection, order_id: int) -> Row | None:
    return conn.execute(select(orders).where(orders.c.id == order_id)).first()


def get_order(engine: Engine, order_id: int, decimals: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = _load(conn, order_id)
    if row is None:
        raise NotFound(f"order {order_id} not found")
    return order_view(row, decimals)


def order_view(row: Row, decimals: int) -> dict[str, Any]:
    """The order as the HTTP API shows it; money as strings."""
    return {
        "id": row.id,
        "user_id": row.user_id,
        "provider": row.provider,
        "provider_order_id": row.provider_order_id,
        "service": row.service,
        "link": row.link,
        "status": row.status,
        "remains": row.remains,
        "quantity": row.quantity,
        "charge": format_money(Decimal(row.charge), decimals),
        "refunded": format_money(Decimal(row.refunded), decimals),
        "provider_status": row.review_status,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "checked_at": _iso(row.observed_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_z(moment)
