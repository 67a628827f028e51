"""The RQ job: check one shard of one provider's orders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
from rq import get_current_job

from paxyo.clock import utcnow
from paxyo.leases import claim, defer, releaser
from paxyo.limits import is_provider_order_id
from paxyo.observations import AppliedChange, apply_observations, refund_line
from paxyo.shard_policy import running_lease_seconds
from paxyo.status_entries import EntryError, StatusEntry
from providers.client import ProviderUnavailable
from providers.replies import ProviderErrorReply
from workers.context import WorkerContext, job_context

log = logging.getLogger("paxyo.workers")
refund_log = logging.getLogger("paxyo.refunds")

def check_shard(provider: str, order_ids: Sequence[int], token: str) -> dict[str, Any]:
    """Entry point RQ calls (by dotted path ``workers.jobs.check_shard``) in a paxyo worker.

    RQ stores the returned dict; the in-process ``report`` is left out of it."""
    result = run_shard(job_context(), provider, tuple(order_ids), token)
    result.pop("report", None)
    return result


def run_shard(ctx: WorkerContext, provider: str, order_ids: tuple[int, ...],
              token: str) -> dict[str, Any]:
    """claim → (held back?) → ask the provider → apply → publish → release.

    Returns counts, plus the whole ``report`` (its changes) when the provider was asked."""
    settings = ctx.settings
    refs = claim(ctx.engine, token, order_ids, utcnow(), running_lease_seconds(settings))
    if not refs:
        return {"provider": provider, "checked": 0, "skipped": "lease lost or orders closed"}
    reason = _held_back(ctx, provider, token)
    if reason:
        return {"provider": provider, "checked": 0, "skipped": reason}
    observed_at = utcnow()
    ask = _ids_to_ask(ctx, provider, refs)
    replies = _fetch(ctx, provider, token, ask) if ask else {}
    report = apply_observations(
        ctx.engine, provider, list(refs), replies, observed_at=observed_at,
        decimals=settings.money_decimals, poll_interval=settings.poll_interval,
        release=releaser(token), webhook=settings.webhooks_enabled)
    ctx.metrics.count_applied(provider, report)
    _log_changes(report.changes)
    _publish(ctx, [c.event.outbox_id for c in report.changes])
    return {"provider": provider, "checked": report.checked, "changed": len(report.changes),
            "no_answer": report.no_answer, "unknown": report.unknown, "report": report}


def _held_back(ctx: WorkerContext, provider: str, token: str) -> str | None:
    """Why this shard must not call its provider now (its orders are then deferred)."""
    settings, now = ctx.settings, utcnow()
    if provider not in settings.providers:
        log.error("shard %s: provider %r is not configured; orders deferred", token, provider)
        defer(ctx.engine, token, now + timedelta(seconds=settings.poll_interval))
        return "provider not configured"
    allowed, wait = ctx.breaker.allow(provider)
    if not allowed:
        defer(ctx.engine, token, now + timedelta(seconds=wait))
        return "circuit open"
    if not ctx.limiter.try_acquire(provider):
        defer(ctx.engine, token, now + timedelta(seconds=ctx.limiter.next_window()))
        log.warning("provider %s: rate limit of %d calls/min reached; shard deferred",
                    provider, settings.provider_rate_limit_per_min)
        return "rate limited"
    return None


def _ids_to_ask(ctx: WorkerContext, provider: str, refs: dict[int, str]) -> list[str]:
    """The shard's provider ids, each once; an id that is not one valid id is never sent.

    Such an id (stored before ids were checked at the door, say "1,2") would smuggle more
    ids into the call, past the provider's limit of 100, and fail the whole shard; its order
    is left open for review instead (see paxyo.observations).
    """
    valid = [pid for pid in refs.values() if is_provider_order_id(pid)]
    invalid = len(refs) - len(valid)
    if invalid:
        ctx.metrics.provider_bad_entries.labels(provider, "invalid_id").inc(invalid)
        log.warning("provider %s: %d orders with an invalid provider order id not asked",
                    provider, invalid)
    return sorted(set(valid))


def _fetch(ctx: WorkerContext, provider: str, token: str,
           provider_ids: list[str]) -> dict[str, StatusEntry | EntryError]:
    """One mass-status call (tenacity retries inside); failures feed the circuit breaker and
    re-raise so that RQ retries the job, and the last retry defers the orders."""
    try:
        replies = ctx.run(ctx.provider(provider).status_many(provider_ids))
    except (ProviderUnavailable, ProviderErrorReply) as exc:
        ctx.breaker.record_failure(provider)
        job = get_current_job()
        if job is None or not job.retries_left:
            defer(ctx.engine, token,
                  utcnow() + timedelta(seconds=ctx.settings.poll_interval))
        log.warning("shard %s of %s failed: %s", token[:8], provider, exc)
        raise
    ctx.breaker.record_success(provider)
    return replies


def _log_changes(changes: list[AppliedChange]) -> None:
    for change in changes:
        if change.previous_status != change.status:
            log.info("order %s: %s -> %s", change.order_id, change.previous_status,
                     change.status)
        if change.refund > 0:
            refund_log.info(refund_line(change))


def _publish(ctx: WorkerContext, outbox_ids: list[int]) -> None:
    if not outbox_ids:
        return
    try:
        ctx.relay.publish_ids(outbox_ids)
    except redis.RedisError as exc:
        log.warning("%d events left for the sweeper: %s", len(outbox_ids), exc)
