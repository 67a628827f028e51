"""Order leases: an order in a queued or running shard is not put in another one.

The dispatcher leases a shard's orders under a token before it enqueues the shard (see
dispatcher.planner); the worker that runs it claims them, and releases them in the
transaction that applies the provider's answer, or defers them unchecked. A lease that is
never released (a killed worker) expires, and a later shard takes the orders again.

A lease also moves the order's ``next_check_at`` to its end, where a killed worker's orders
fall due again anyway: the planner's search for due orders, which walks the due-time index,
then never reads the orders already leased (with 100,000 orders due at once, it had read
past every leased one on each tick). Checking an order sets its next check time afresh. A
worker's claim extends only ``lease_until``, which no index holds, so that on PostgreSQL it is
a HOT update that adds no index entries (a shard runs for well under the queued lease, so its
orders are rarely due again before it ends).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, bindparam, case, or_, select, update
from sqlalchemy.engine import Connection

from paxyo.statuses import StatusClass
from paxyo.store.engine import transactional
from paxyo.store.schema import orders

OPEN = StatusClass.OPEN.value


def lease_free(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Not leased, or the lease ended before ``now`` (a time, or a bind parameter)."""
    return or_(orders.c.lease_until.is_(None), orders.c.lease_until < now)


def still_open() -> ColumnElement[bool]:
    """``status_class = 'open'`` written so that no index serves it (``status_class || ''``).

    For statements that name their rows by id or lease token: without table statistics,
    SQLite would otherwise pick ix_orders_due for the equality and scan every open order
    (100k rows per 100-order shard), holding the write lock meanwhile.
    """
    return (orders.c.status_class + "") == OPEN


# Built once: these run for every shard (building a statement costs more than running it).
_LEASE = (update(orders)
          .where(orders.c.id.in_(bindparam("p_oids", expanding=True)), still_open(),
                 lease_free(bindparam("p_now")))
          .values(lease_until=bindparam("p_until"), lease_token=bindparam("p_token"),
                  next_check_at=bindparam("p_until")))
_LEASED = (select(orders.c.id, orders.c.lease_token)
           .where(orders.c.lease_token.in_(bindparam("p_tokens", expanding=True)))
           .order_by(orders.c.id))
_EXTEND = (update(orders)
           .where(orders.c.lease_token.in_(bindparam("p_tokens", expanding=True)))
           .values(lease_until=bindparam("p_until")))
_CLAIMED = select(orders.c.id, orders.c.provider_order_id, orders.c.lease_token).where(
    orders.c.lease_token.in_(bindparam("p_tokens", expanding=True)), still_open())
_RELEASE = (update(orders).where(orders.c.lease_token == bindparam("p_token"))
            .values(lease_until=None, lease_token=None))
_DEFER = (update(orders).where(orders.c.lease_token == bindparam("p_token"))
          .values(lease_until=None, lease_token=None, next_check_at=bindparam("p_next")))


def lease(conn: Connection, order_ids: Sequence[int], now: datetime,
          until: datetime) -> tuple[str, tuple[int, ...]]:
    """Lease the still-open, still-free orders among ``order_ids`` under a new token, in the
    caller's transaction. Returns the token and the leased ids (ascending; maybe none)."""
    return lease_all(conn, [order_ids], now, until)[0]


def lease_all(conn: Connection, cuts: Sequence[Sequence[int]], now: datetime,
              until: datetime) -> list[tuple[str, tuple[int, ...]]]:
    """:func:`lease` for each of ``cuts`` (a tick's shards), each under its own token, with
    one statement per cut and one SELECT that reads back what each got."""
    tokens = [uuid.uuid4().hex for _ in cuts]
    for token, order_ids in zip(tokens, cuts, strict=True):
        conn.execute(_LEASE, {"p_oids": list(order_ids), "p_now": now, "p_until": until,
                              "p_token": token})
    leased: dict[str, list[int]] = {token: [] for token in tokens}
    for order_id, token in conn.execute(_LEASED, {"p_tokens": tokens}):
        leased[token].append(order_id)
    return [(token, tuple(leased[token])) for token in tokens]


def lease_ended() -> dict[str, ColumnElement[object]]:
    """SET values for an UPDATE that writes a checked order: they end the lease of the token
    bound as ``p_lease`` (None: no lease to end) and leave another token's lease alone. So a
    worker's check releases its orders in the statement that records it, not in one more row
    version each. ``lease_until`` is cleared also where ``lease_token`` is already NULL, so
    the result does not depend on the order in which the database evaluates the two."""
    token = bindparam("p_lease", type_=orders.c.lease_token.type)
    return {"lease_until": case((or_(orders.c.lease_token.is_(None),
                                     orders.c.lease_token == token), None),
                                else_=orders.c.lease_until),
            "lease_token": case((orders.c.lease_token == token, None),
                                else_=orders.c.lease_token)}


def release(conn: Connection, token: str) -> None:
    """End ``token``'s leases, in the caller's transaction."""
    conn.execute(_RELEASE, {"p_token": token})


def claim(engine: Engine, token: str, now: datetime, hold_seconds: float) -> dict[int, str]:
    """A worker starting a shard: extend the lease of the orders still under its token (the
    planner's token names exactly the orders it leased: no list of ids is needed).

    Returns those orders' provider order ids, by order id.
    """
    return claim_all(engine, [token], now, hold_seconds)[token]


def claim_all(engine: Engine, tokens: Sequence[str], now: datetime,
              hold_seconds: float) -> dict[str, dict[int, str]]:
    """:func:`claim` for a job's shards, in one transaction: by token, the provider order ids
    of the orders each still holds (by order id; empty when it lost them all)."""
    tokens = list(tokens)

    def run(conn: Connection) -> dict[str, dict[int, str]]:
        conn.execute(_EXTEND, {"p_tokens": tokens,
                               "p_until": now + timedelta(seconds=hold_seconds)})
        held: dict[str, dict[int, str]] = {token: {} for token in tokens}
        for order_id, provider_order_id, token in conn.execute(_CLAIMED, {"p_tokens": tokens}):
            held[token][order_id] = provider_order_id
        return held

    return transactional(engine, run)


def defer(engine: Engine, token: str, until: datetime) -> None:
    """Release a shard's orders without checking them, to be due again at ``until``."""
    transactional(engine, lambda conn: conn.execute(_DEFER, {"p_token": token, "p_next": until}))
