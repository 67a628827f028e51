"""The RQ job: check a few shards (each ≤100 orders of one provider), their calls in flight
at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis
from rq import get_current_job
from sqlalchemy.engine import Row

from paxyo.change_writes import AppliedChange
from paxyo.clock import utcnow
from paxyo.leases import claim_all, defer
from paxyo.limits import is_provider_order_id
from paxyo.observations import apply_observations, refund_line
from paxyo.shard_policy import running_lease_seconds
from paxyo.status_entries import EntryError, StatusEntry
from providers.client import ProviderUnavailable
from providers.replies import ProviderErrorReply
from workers.context import WorkerContext, job_context
from workers.unmarked import UnmarkedEvents

log = logging.getLogger("paxyo.workers")
refund_log = logging.getLogger("paxyo.refunds")
T = TypeVar("T")


def check_shard(provider: str, order_ids: Sequence[int], token: str) -> dict[str, Any]:
    """Entry point RQ calls (by dotted path ``workers.jobs.check_shard``) in a paxyo worker:
    one shard (jobs queued by a dispatcher of an earlier release).

    RQ stores the returned dict; the in-process ``report`` is left out of it."""
    result = run_shard(job_context(), provider, tuple(order_ids), token)
    result.pop("report", None)
    return result


def check_shards(shards: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Entry point RQ calls (``workers.jobs.check_shards``): several ``[provider, order_ids,
    token]`` shards whose provider calls are in flight at the same time."""
    results = run_shards(job_context(), [(str(p), tuple(ids), str(t)) for p, ids, t in shards])
    for result in results:
        result.pop("report", None)
    return results


def run_shard(ctx: WorkerContext, provider: str, order_ids: tuple[int, ...],
              token: str) -> dict[str, Any]:
    """One shard: see :func:`run_shards`."""
    return run_shards(ctx, [(provider, order_ids, token)])[0]


@dataclass
class _Ready:
    """A claimed shard allowed to call its provider now."""

    provider: str
    token: str
    refs: dict[int, str]
    ask: list[str]
    observed_at: datetime


def run_shards(ctx: WorkerContext,
               shards: Sequence[tuple[str, tuple[int, ...], str]]) -> list[dict[str, Any]]:
    """Claim every shard's orders (one transaction), then per shard: (held back?) → ask the
    provider → apply → publish → release.

    The shards' provider calls run at the same time on the worker's event loop, and each
    reply is applied (in its own transaction) as soon as it arrives, so a slow provider holds
    up no other shard's orders. A shard whose provider failed keeps its leases, and once the
    others are applied the job raises so that RQ runs it again: on that run, the shards
    already applied find their leases released and are skipped. Returns one result per
    shard: counts, plus the whole ``report`` (its changes) when the provider answered.
    """
    held = claim_all(ctx.engine, [token for _, _, token in shards],
                     utcnow(), running_lease_seconds(ctx.settings))
    prepared = [_prepare(ctx, provider, token, held[token]) for provider, _, token in shards]
    for p in prepared:
        if isinstance(p, _Ready) and p.ask:
            ctx.provider(p.provider)  # clients are built outside the loop
    unmarked = UnmarkedEvents(ctx.relay)
    try:
        outcomes = ctx.run(_gather([_check(ctx, p, unmarked) for p in prepared]))
    finally:
        unmarked.flush()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    return outcomes  # type: ignore[return-value]


def _finished(result: dict[str, Any]) -> dict[str, Any]:
    """Stamp a shard's result with when it let go of its orders (a job's shards finish at
    different times)."""
    result["finished_at"] = time.time()
    return result


async def _gather(calls: list[Coroutine[Any, Any, T]]) -> list[T | BaseException]:
    return await asyncio.gather(*calls, return_exceptions=True)


async def _check(ctx: WorkerContext, shard: _Ready | dict[str, Any],
                 unmarked: UnmarkedEvents) -> dict[str, Any]:
    """Ask one shard's provider and apply its reply (raises when the provider failed)."""
    if not isinstance(shard, _Ready):
        return _finished(shard)
    replies: dict[str, StatusEntry | EntryError] = {}
    if shard.ask:
        try:
            replies = await ctx.provider(shard.provider).status_many(shard.ask)
        except Exception as exc:
            _provider_failed(ctx, shard, exc)
            raise
        ctx.breaker.record_success(shard.provider)
    return _finished(_apply(ctx, shard, replies, unmarked))


def _prepare(ctx: WorkerContext, provider: str, token: str,
             refs: dict[int, str]) -> _Ready | dict[str, Any]:
    """Whether a shard whose claimed orders are ``refs`` may call now (else a result)."""
    if not refs:
        return {"provider": provider, "checked": 0, "skipped": "lease lost or orders closed"}
    reason = _held_back(ctx, provider, token)
    if reason:
        return {"provider": provider, "checked": 0, "skipped": reason}
    return _Ready(provider, token, refs, _ids_to_ask(ctx, provider, refs), utcnow())


def _apply(ctx: WorkerContext, shard: _Ready, replies: dict[str, StatusEntry | EntryError],
           unmarked: UnmarkedEvents) -> dict[str, Any]:
    """Apply a reply (marking the job's published events in the same transaction), then
    publish its events."""
    settings = ctx.settings
    marks = list(unmarked.ids)
    report = apply_observations(
        ctx.engine, shard.provider, list(shard.refs), replies, observed_at=shard.observed_at,
        decimals=settings.money_decimals, poll_interval=settings.poll_interval,
        lease_token=shard.token, webhook=settings.webhooks_enabled, published=marks)
    unmarked.marked(marks)
    ctx.metrics.count_applied(shard.provider, report)
    _log_changes(report.changes)
    _publish(ctx, report.to_publish, unmarked)
    return {"provider": shard.provider, "checked": report.checked,
            "changed": len(report.changes), "no_answer": report.no_answer,
            "unknown": report.unknown, "report": report}


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


def _provider_failed(ctx: WorkerContext, shard: _Ready, exc: BaseException) -> None:
    """A provider call failed (tenacity gave up): feed the circuit breaker; on the job's last
    run, defer the orders to the next interval. Unexpected errors only re-raise."""
    if not isinstance(exc, (ProviderUnavailable, ProviderErrorReply)):
        log.error("shard %s of %s: %s: %s", shard.token[:8], shard.provider,
                  type(exc).__name__, exc)
        return
    ctx.breaker.record_failure(shard.provider)
    job = get_current_job()
    if job is None or not job.retries_left:
        defer(ctx.engine, shard.token,
              utcnow() + timedelta(seconds=ctx.settings.poll_interval))
    log.warning("shard %s of %s failed: %s", shard.token[:8], shard.provider, exc)


def _log_changes(changes: list[AppliedChange]) -> None:
    for change in changes:
        if change.previous_status != change.status:
            log.info("order %s: %s -> %s", change.order_id, change.previous_status,
                     change.status)
        if change.refund > 0:
            refund_log.info(refund_line(change))


def _publish(ctx: WorkerContext, rows: list[Row], unmarked: UnmarkedEvents) -> None:
    """Publish a committed reply's outbox rows; they are marked later (workers.unmarked)."""
    if not rows:
        return
    try:
        ctx.relay.publish_rows(rows, mark=False)
    except redis.RedisError as exc:
        log.warning("%d events left for the sweeper: %s", len(rows), exc)
        return
    unmarked.published([row.id for row in rows])
