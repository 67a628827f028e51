"""What an operator asks of a running system, read from the source of truth.

The same reads feed ``paxyo status`` and the web process's scrape-time gauges
(:mod:`monitoring.collectors`), so the CLI and the dashboard never disagree. Each read is a
handful of indexed queries or O(1) Redis calls: cheap enough for every scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import Engine, func, select

from paxyo.clock import iso_z, utcnow
from paxyo.keys import Keys
from paxyo.protection import CircuitBreaker, CircuitState
from paxyo.settings import Settings
from paxyo.statuses import StatusClass
from paxyo.store.schema import orders, outbox
from paxyo.webhook_queue import WebhookStatus, pending_count

GATEWAY_ALIVE_SECONDS = 30.0  # a gateway whose heartbeat is older counts as down
CIRCUIT_LEVELS = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True)
class DatabaseStatus:
    open_orders: dict[str, int]
    due_now: int
    lag_seconds: float
    outbox_backlog: int
    webhook_backlog: int = 0


@dataclass(frozen=True)
class QueueStatus:
    queued: int
    started: int
    scheduled: int
    failed: int


@dataclass(frozen=True)
class DispatcherStatus:
    leader: str | None       # the leading process's identity (short), None when nobody leads
    term: int | None         # fencing term of the last heartbeat
    heartbeat_at: float | None  # epoch seconds of the leader's last tick
    enqueued: int | None     # shards the reporting leader has enqueued since it started


@dataclass(frozen=True)
class RedisStatus:
    queue: QueueStatus
    dispatcher: DispatcherStatus
    gateways_up: int
    circuits: dict[str, CircuitState] = field(default_factory=dict)


def dispatcher_lag(engine: Engine, now: datetime) -> float:
    """Seconds the most overdue open order is past its check time (0 when none is late)."""
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(orders.c.next_check_at))
                              .where(orders.c.status_class == StatusClass.OPEN.value)).scalar()
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def read_database_status(engine: Engine, now: datetime | None = None) -> DatabaseStatus:
    """Open orders per provider, orders due now, dispatcher lag and outbox backlog."""
    now = now or utcnow()
    is_open = orders.c.status_class == StatusClass.OPEN.value
    with engine.connect() as conn:
        per_provider = conn.execute(select(orders.c.provider, func.count())
                                    .where(is_open).group_by(orders.c.provider)).all()
        due = conn.execute(select(func.count()).select_from(orders)
                           .where(is_open, orders.c.next_check_at <= now)).scalar_one()
        backlog = conn.execute(select(func.count()).select_from(outbox)
                               .where(outbox.c.published_at.is_(None))).scalar_one()
    return DatabaseStatus(open_orders={p: int(n) for p, n in per_provider}, due_now=int(due),
                          lag_seconds=dispatcher_lag(engine, now), outbox_backlog=int(backlog),
                          webhook_backlog=pending_count(engine))


def read_queue_status(client: redis.Redis, queue_name: str) -> QueueStatus:
    queue = Queue(queue_name, connection=client)
    return QueueStatus(
        queued=queue.count,
        started=StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
        scheduled=ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
        failed=FailedJobRegistry(queue=queue).get_job_count(cleanup=False))


def read_dispatcher_status(client: redis.Redis, keys: Keys) -> DispatcherStatus:
    leader = client.get(keys.dispatcher_lock)
    raw = client.get(keys.dispatcher_heartbeat)
    beat = orjson.loads(raw) if raw else {}
    return DispatcherStatus(leader=leader.decode()[:8] if leader else None,
                            term=beat.get("fence"), heartbeat_at=beat.get("at"),
                            enqueued=beat.get("enqueued"))


def read_redis_status(client: redis.Redis, settings: Settings,
                      providers: Iterable[str] = ()) -> RedisStatus:
    """Queue, dispatcher, gateways, and the circuit of each configured or given provider."""
    keys = Keys(settings.redis_prefix)
    breaker = CircuitBreaker(client, keys)
    now = time.time()
    return RedisStatus(
        queue=read_queue_status(client, settings.queue_name),
        dispatcher=read_dispatcher_status(client, keys),
        gateways_up=int(client.zcount(keys.gateways, now - GATEWAY_ALIVE_SECONDS, "+inf")),
        circuits={p: breaker.state(p, now) for p in sorted({*settings.providers, *providers})})


def beat_gateway(client: redis.Redis, keys: Keys, gateway_id: str) -> None:
    """Record that this gateway is alive (and forget gateways long gone)."""
    now = time.time()
    with client.pipeline() as pipe:
        pipe.zadd(keys.gateways, {gateway_id: now})
        pipe.zremrangebyscore(keys.gateways, "-inf", now - 10 * GATEWAY_ALIVE_SECONDS)
        pipe.execute()


def format_status(db: DatabaseStatus, rs: RedisStatus, now: float | None = None) -> str:
    """The ``paxyo status`` report."""
    now = time.time() if now is None else now
    d = rs.dispatcher
    beat = ("no heartbeat" if d.heartbeat_at is None
            else f"last tick {now - d.heartbeat_at:.1f}s ago")
    lines = [f"open orders: {sum(db.open_orders.values())}"]
    lines += [f"  {p}: {n} (circuit {rs.circuits.get(p, CircuitState.CLOSED).value})"
              for p, n in sorted(db.open_orders.items())]
    lines += [f"  {p}: 0 (circuit {s.value})" for p, s in rs.circuits.items()
              if p not in db.open_orders]
    lines += [
        f"due now: {db.due_now}",
        f"queue: {rs.queue.queued} queued, {rs.queue.started} running, "
        f"{rs.queue.scheduled} scheduled for retry, {rs.queue.failed} failed",
        f"dispatcher: leader {d.leader or 'none'} (term {d.term}, {beat}), "
        f"lag {db.lag_seconds:.1f}s",
        f"outbox backlog: {db.outbox_backlog}",
        f"webhook backlog: {db.webhook_backlog}",
        f"gateways up: {rs.gateways_up}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class FailedJob:
    id: str
    description: str
    ended_at: datetime | None
    error: str  # the last line of the exception


def failed_registry(client: redis.Redis, queue_name: str) -> FailedJobRegistry:
    return FailedJobRegistry(queue=Queue(queue_name, connection=client))


def list_failed(client: redis.Redis, queue_name: str) -> list[FailedJob]:
    """The queue's failed jobs, oldest first."""
    registry = failed_registry(client, queue_name)
    jobs = Job.fetch_many(registry.get_job_ids(), connection=client)
    return [FailedJob(job.id, job.description or job.func_name or "", job.ended_at,
                      _last_line(job.exc_info)) for job in jobs if job is not None]


class NotFailedJobs(LookupError):
    """Job ids that are not in the queue's failed registry (nothing was requeued)."""

    def __init__(self, job_ids: list[str]) -> None:
        super().__init__(", ".join(job_ids))
        self.job_ids = job_ids


def requeue_failed(client: redis.Redis, queue_name: str, job_ids: list[str] | None) -> list[str]:
    """Put failed jobs back on the queue (all of them when ``job_ids`` is None); when any of
    ``job_ids`` is not a failed job, requeue none and raise :class:`NotFailedJobs`."""
    registry = failed_registry(client, queue_name)
    failed = registry.get_job_ids()
    if job_ids is not None:
        unknown = [job_id for job_id in job_ids if job_id not in set(failed)]
        if unknown:
            raise NotFailedJobs(unknown)
    requeued = []
    for job_id in failed if job_ids is None else job_ids:
        registry.requeue(job_id)
        requeued.append(job_id)
    return requeued


def format_failed(jobs: list[FailedJob]) -> str:
    if not jobs:
        return "no failed jobs"
    return "\n".join(f"{j.id}  {j.ended_at:%Y-%m-%d %H:%M:%S}  {j.description}: {j.error}"
                     if j.ended_at else f"{j.id}  {j.description}: {j.error}" for j in jobs)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no error recorded)"


def format_webhook_status(status: WebhookStatus, settings: Settings, now: datetime) -> str:
    """``paxyo webhooks status``: where events go, what waits, what failed last."""
    oldest = ("none" if status.oldest_pending_at is None
              else f"{(now - status.oldest_pending_at).total_seconds():.0f}s ago")
    last = ("none" if status.last_error is None
            else f"{status.last_error} (at {iso_z(status.last_error_at)})"
            if status.last_error_at else status.last_error)
    return "\n".join([
        "webhook url: " + (settings.webhook_url_label
                           or "not set (PAXYO_WEBHOOK_URL): nothing is queued"),
        f"backlog: {status.pending} event(s) to deliver",
        f"oldest undelivered: {oldest}",
        f"failed (given up; `paxyo webhooks retry --all`): {status.failed}",
        f"last error: {last}",
    ])
