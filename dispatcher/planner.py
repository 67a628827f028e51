"""Which orders to check now, cut into leased shards of at most 100 per provider.

Calls are saved in two ways: a provider's due orders are cut into as few shards as possible,
and a part-full last shard is topped up with that provider's orders that fall due within the
batching window anyway, so each call carries up to 100 ids. Orders checked together are
rescheduled together, so cohorts stay aligned from one cycle to the next.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from paxyo.leases import lease_all, lease_free
from paxyo.shard_policy import SHARD_SIZE
from paxyo.statuses import StatusClass
from paxyo.store.engine import transactional
from paxyo.store.schema import orders

OPEN = StatusClass.OPEN.value


@dataclass(frozen=True, slots=True)
class Shard:
    provider: str
    order_ids: tuple[int, ...]
    token: str


def due_orders(engine: Engine, now: datetime, limit: int) -> list[tuple[str, int]]:
    """(provider, order id) of the due, unleased open orders, most overdue first."""
    with engine.connect() as conn:
        return [(r.provider, r.id) for r in conn.execute(
            select(orders.c.provider, orders.c.id)
            .where(orders.c.status_class == OPEN, orders.c.next_check_at <= now, lease_free(now))
            .order_by(orders.c.next_check_at).limit(limit))]


def by_provider(due: list[tuple[str, int]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for provider, order_id in due:
        grouped[provider].append(order_id)
    return grouped


def top_up(engine: Engine, provider: str, now: datetime, window: float, count: int,
           exclude: set[int]) -> list[int]:
    """Up to ``count`` of the provider's orders due within ``window`` seconds, soonest first.

    ``exclude`` (the due orders already in the provider's shards) is due by now, so it meets
    this range only when an order was rescheduled between the two reads: the shard is then a
    little short, rather than every due order being read again here to make up for it."""
    if count <= 0:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(orders.c.id)
            .where(orders.c.provider == provider, orders.c.status_class == OPEN,
                   orders.c.next_check_at > now,
                   orders.c.next_check_at <= now + timedelta(seconds=window), lease_free(now))
            .order_by(orders.c.next_check_at).limit(count)).all()
    return [r.id for r in rows if r.id not in exclude][:count]


def plan_shards(engine: Engine, *, now: datetime, poll_interval: float, lease_seconds: float,
                max_due: int = 50_000, max_shards: int | None = None) -> list[Shard]:
    """Lease and return this tick's shards (each ≤100 orders of one provider).

    All of a tick's shards are leased in one transaction: one write lock per tick rather
    than one per shard, which matters on SQLite where workers wait for the same lock.
    """
    window = poll_interval / 2
    cuts: list[tuple[str, list[int]]] = []
    if max_shards is not None:  # the most overdue orders fill at most this many shards
        max_due = min(max_due, max_shards * SHARD_SIZE)
    due = due_orders(engine, now, max_due)
    grouped = by_provider(due)
    order_rank = {oid: rank for rank, (_, oid) in enumerate(due)}  # across providers
    for provider, due in grouped.items():
        spare = -len(due) % SHARD_SIZE
        ids = due + top_up(engine, provider, now, window, spare, set(due))
        cuts += [(provider, ids[i:i + SHARD_SIZE]) for i in range(0, len(ids), SHARD_SIZE)]
    if max_shards is not None:  # the shards whose first order is the most overdue
        cuts = sorted(cuts, key=lambda cut: order_rank[cut[1][0]])[:max_shards]
    if not cuts:
        return []
    until = now + timedelta(seconds=lease_seconds)

    def run(conn: Connection) -> list[Shard]:
        leased = lease_all(conn, [ids for _, ids in cuts], now, until)
        return [Shard(provider, ids, token)
                for (provider, _), (token, ids) in zip(cuts, leased, strict=True) if ids]

    return transactional(engine, run)
