"""``paxyo check-once``: one whole status cycle in-process, printed like the seed's cron.

Every open order of every configured provider is asked for with mass-status calls of at most
100 ids, and each answer is applied exactly once. Committed events are then published to
Redis if it answers; otherwise they stay in the outbox for the relay's sweeper.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import redis
from sqlalchemy import Engine, select

from paxyo.clock import utcnow
from paxyo.keys import Keys
from paxyo.limits import is_provider_order_id
from paxyo.observations import ApplyReport, apply_observations, refund_line
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.shard_policy import SHARD_SIZE
from paxyo.statuses import StatusClass
from paxyo.store.schema import orders
from providers.client import ProviderClient, ProviderUnavailable
from providers.replies import ProviderErrorReply

log = logging.getLogger("paxyo.check")



@dataclass
class CycleSummary:
    users: int = 0
    report: ApplyReport = field(default_factory=ApplyReport)
    failed_providers: list[str] = field(default_factory=list)
    unconfigured: dict[str, int] = field(default_factory=dict)

    @property
    def updated(self) -> int:
        return len(self.report.changes)


def _stamp(moment: datetime) -> str:
    return moment.strftime("[%Y-%m-%d %H:%M:%S]")


def open_orders_by_provider(engine: Engine) -> dict[str, list[tuple[int, int, str]]]:
    """provider -> [(order id, user id, provider order id)] of every open order."""
    grouped: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execute(
            select(orders.c.id, orders.c.user_id, orders.c.provider, orders.c.provider_order_id)
            .where(orders.c.status_class == StatusClass.OPEN.value).order_by(orders.c.id)
        ):
            grouped[row.provider].append((row.id, row.user_id, row.provider_order_id))
    return grouped


async def _check_provider(client: ProviderClient, engine: Engine, settings: Settings,
                          refs: list[tuple[int, int, str]]) -> ApplyReport:
    report = ApplyReport()
    for start in range(0, len(refs), SHARD_SIZE):
        shard = refs[start:start + SHARD_SIZE]
        observed_at = utcnow()
        ask = sorted({ref[2] for ref in shard if is_provider_order_id(ref[2])})
        replies = await client.status_many(ask) if ask else {}
        report.merge(await asyncio.to_thread(
            apply_observations, engine, client.config.name, [ref[0] for ref in shard],
            replies, observed_at=observed_at, decimals=settings.money_decimals,
            poll_interval=settings.poll_interval))
    return report


async def run_cycle(settings: Settings, engine: Engine,
                    emit: Callable[[str], None] = print) -> CycleSummary:
    """Check every open order once, print the seed's lines, return what happened."""
    emit(f"{_stamp(utcnow())} Starting order status check...")
    summary = CycleSummary()
    grouped = open_orders_by_provider(engine)
    summary.users = len({ref[1] for refs in grouped.values() for ref in refs})
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = {}
        for provider, refs in grouped.items():
            config = settings.providers.get(provider)
            if config is None:
                summary.unconfigured[provider] = len(refs)
                log.warning("%d open orders name provider %r, which is not configured",
                            len(refs), provider)
                continue
            client = ProviderClient(config, session, timeout=settings.provider_timeout,
                                    attempts=settings.provider_attempts)
            tasks[provider] = asyncio.create_task(_check_provider(client, engine, settings, refs))
        for provider, task in tasks.items():
            try:
                summary.report.merge(await task)
            except (ProviderUnavailable, ProviderErrorReply) as exc:
                summary.failed_providers.append(provider)
                log.error("provider %s failed this cycle: %s", provider, exc)
    for change in sorted(summary.report.changes, key=lambda c: c.order_id):
        if change.refund > 0:
            emit(refund_line(change))
    per_user: dict[int, int] = defaultdict(int)
    for change in summary.report.changes:
        per_user[change.user_id] += 1
    for user_id in sorted(per_user):
        count = per_user[user_id]
        emit(f"  User {user_id}: {count} orders updated")
    _publish(settings, engine, summary)
    emit(f"{_stamp(utcnow())} Complete: Checked {summary.users} users, "
         f"{summary.updated} orders updated")
    return summary


def _publish(settings: Settings, engine: Engine, summary: CycleSummary) -> None:
    ids = [change.event.outbox_id for change in summary.report.changes]
    if not ids:
        return
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        relay = OutboxRelay(engine, client, RelayConfig(
            Keys(settings.redis_prefix), settings.history_size, settings.history_ttl))
        relay.publish_ids(ids)
    except redis.RedisError as exc:
        log.warning("events stay in the outbox until Redis answers (%s)", exc)
    finally:
        client.close()
