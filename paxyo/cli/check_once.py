"""``paxyo check-once``: one whole status cycle in-process, printed like the seed's cron.

Every open order of every configured provider is checked once through the worker's own
shard path (``workers.jobs.run_shard``): leased in shards of at most 100, under the same
rate limit and circuit breaker as the workers, each answer applied exactly once and its
events published to Redis (or left in the outbox for the relay's sweeper). Orders another
process holds leased are left to it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import redis
from sqlalchemy import Engine, select

from monitoring.metrics import process_metrics
from paxyo.clock import utcnow
from paxyo.leases import defer, lease
from paxyo.observations import ApplyReport, refund_line
from paxyo.settings import Settings
from paxyo.shard_policy import SHARD_SIZE, running_lease_seconds
from paxyo.statuses import StatusClass
from paxyo.store.engine import transactional
from paxyo.store.schema import orders
from providers.client import ProviderUnavailable
from providers.replies import ProviderErrorReply
from workers.context import WorkerContext, build_context
from workers.jobs import run_shard

log = logging.getLogger("paxyo.check")


@dataclass
class CycleSummary:
    users: int = 0
    report: ApplyReport = field(default_factory=ApplyReport)
    failed_providers: list[str] = field(default_factory=list)
    held_back: dict[str, str] = field(default_factory=dict)  # provider -> why not asked
    unconfigured: dict[str, int] = field(default_factory=dict)

    @property
    def updated(self) -> int:
        return len(self.report.changes)


def _stamp(moment: datetime) -> str:
    return moment.strftime("[%Y-%m-%d %H:%M:%S]")


def open_orders_by_provider(engine: Engine) -> tuple[dict[str, list[int]], int]:
    """(provider -> ids of its open orders, ascending; how many users own open orders)."""
    grouped: dict[str, list[int]] = defaultdict(list)
    users: set[int] = set()
    with engine.connect() as conn:
        for row in conn.execute(
            select(orders.c.id, orders.c.user_id, orders.c.provider)
            .where(orders.c.status_class == StatusClass.OPEN.value).order_by(orders.c.id)
        ):
            grouped[row.provider].append(row.id)
            users.add(row.user_id)
    return grouped, len(users)


def _check_provider(ctx: WorkerContext, provider: str, ids: list[int],
                    summary: CycleSummary) -> None:
    """Lease and run the provider's shards one after another; stop at its first failure.

    Each shard is leased just before it runs, so no lease waits behind a slow provider."""
    lease_seconds = running_lease_seconds(ctx.settings)
    for start in range(0, len(ids), SHARD_SIZE):
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        token, leased = transactional(ctx.engine, partial(
            lease, order_ids=ids[start:start + SHARD_SIZE], now=now, until=until))
        if not leased:
            continue  # closed meanwhile, or another process is checking them
        try:
            result = run_shard(ctx, provider, leased, token)
        except (ProviderUnavailable, ProviderErrorReply) as exc:  # run_shard deferred them
            summary.failed_providers.append(provider)
            log.error("provider %s failed this cycle: %s", provider, exc)
            return
        except redis.RedisError as exc:  # no rate limit or breaker to consult
            defer(ctx.engine, token, now)
            summary.failed_providers.append(provider)
            log.error("provider %s not checked: Redis does not answer (%s)", provider, exc)
            return
        if "report" in result:
            summary.report.merge(result["report"])
        elif result.get("skipped") in ("circuit open", "rate limited"):
            summary.held_back[provider] = result["skipped"]
            log.warning("provider %s: %s; its orders are checked later", provider,
                        result["skipped"])
            if result["skipped"] == "circuit open":
                summary.failed_providers.append(provider)
            return


def run_cycle(settings: Settings, emit: Callable[[str], None] = print) -> CycleSummary:
    """Check every open order once, print the seed's lines, return what happened."""
    emit(f"{_stamp(utcnow())} Starting order status check...")
    summary = CycleSummary()
    ctx = build_context(settings, process_metrics())
    try:
        grouped, summary.users = open_orders_by_provider(ctx.engine)
        for provider, ids in grouped.items():
            if provider not in settings.providers:
                summary.unconfigured[provider] = len(ids)
                log.warning("%d open orders name provider %r, which is not configured",
                            len(ids), provider)
                continue
            _check_provider(ctx, provider, ids, summary)
    finally:
        ctx.close()
    for change in sorted(summary.report.changes, key=lambda c: c.order_id):
        if change.refund > 0:
            emit(refund_line(change))
    per_user: dict[int, int] = defaultdict(int)
    for change in summary.report.changes:
        per_user[change.user_id] += 1
    for user_id in sorted(per_user):
        emit(f"  User {user_id}: {per_user[user_id]} orders updated")
    emit(f"{_stamp(utcnow())} Complete: Checked {summary.users} users, "
         f"{summary.updated} orders updated")
    return summary
