"""``paxyo dispatcher``: the tick loop (leader only) that enqueues shards and sweeps the outbox."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

import orjson
import redis
from rq import Queue, Retry, Worker
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.leader import LeaderLock
from dispatcher.planner import Shard, plan_shards
from monitoring.metrics import Metrics
from monitoring.push import MetricsPusher, serve_process_metrics
from paxyo.clock import utcnow
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.shard_policy import JOB_RETRIES, RETRY_INTERVALS, job_timeout, queued_lease_seconds
from paxyo.store.server_settings import server_warnings

log = logging.getLogger("paxyo.dispatcher")

TICK_SECONDS = 1.0
SWEEP_EVERY = 2.0
QUEUED_PER_WORKER = 10  # jobs queued per live worker (a few seconds of work)
MIN_QUEUED = 50  # jobs


class Dispatcher:
    def __init__(self, settings: Settings, engine: Engine, client: redis.Redis,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.redis = client
        self.keys = Keys(settings.redis_prefix)
        self.queue = Queue(settings.queue_name, connection=client)
        self.lock = LeaderLock(client, self.keys.dispatcher_lock, self.keys.dispatcher_fence)
        self.relay = OutboxRelay(engine, client, RelayConfig(
            self.keys, settings.history_size, settings.history_ttl),
            on_published=metrics.events_published.inc)
        self._last_sweep = 0.0
        self.enqueued = 0

    def tick(self) -> list[Shard]:
        """One tick: renew leadership; as leader, enqueue due shards and sweep the outbox."""
        leading = self.lock.acquire_or_renew()
        self.metrics.dispatcher_leader.set(1 if leading else 0)
        if not leading:
            return []
        now = utcnow()
        room = self.queue_room() * self.settings.shards_per_job
        shards: list[Shard] = []
        if room > 0:
            with self.metrics.dispatcher_plan_seconds.time():
                shards = plan_shards(self.engine, now=now,
                                     poll_interval=self.settings.poll_interval,
                                     lease_seconds=queued_lease_seconds(self.settings),
                                     max_shards=room)
        if shards:
            self.enqueue(shards)
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = time.monotonic()
            swept = self.relay.sweep()
            if swept:
                log.info("swept %d unpublished outbox events", swept)
        self.redis.set(self.keys.dispatcher_heartbeat, orjson.dumps({
            "at": time.time(), "fence": self.lock.fence,
            "enqueued": self.enqueued}), ex=60)
        return shards

    def queue_room(self) -> int:
        """How many more jobs may be queued now (backpressure).

        The queue holds a few seconds of work for the workers there are, never more: when
        workers fall behind, due orders wait in the database, most overdue first, instead of
        in a FIFO queue where their leases would expire and they would be planned again.
        Dispatcher lag then grows and alerts, and scaling workers drains it.
        """
        workers = Worker.count(connection=self.redis, queue=self.queue)
        return max(MIN_QUEUED, QUEUED_PER_WORKER * workers) - self.queue.count

    def enqueue(self, shards: list[Shard]) -> None:
        """One job per ``shards_per_job`` shards, most overdue first (the planner's order)."""
        per_job = self.settings.shards_per_job
        timeout = job_timeout(self.settings.provider_attempts, self.settings.provider_timeout,
                              per_job)
        groups = [shards[i:i + per_job] for i in range(0, len(shards), per_job)]
        jobs = [Queue.prepare_data(
            "workers.jobs.check_shards",
            args=([[s.provider, list(s.order_ids), s.token] for s in group],),
            job_id=f"shard-{group[0].token}", timeout=timeout, result_ttl=300,
            failure_ttl=7 * 86400, description=_describe(group),
            retry=Retry(max=JOB_RETRIES, interval=RETRY_INTERVALS),
            meta={"fence": self.lock.fence}) for group in groups]
        with self.redis.pipeline() as pipe:
            self.queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
        self.enqueued += len(shards)
        self.metrics.shards_enqueued.inc(len(shards))
        log.info("enqueued %d shards (%d orders)", len(shards),
                 sum(len(s.order_ids) for s in shards))


def _describe(group: list[Shard]) -> str:
    providers = ", ".join(sorted({s.provider for s in group}))
    return (f"check {sum(len(s.order_ids) for s in group)} orders of {providers} "
            f"in {len(group)} shard(s)")


def log_server_warnings(engine: Engine) -> None:
    """Log the database server's settings that slow every check (once, at start); a database
    that is down now is the ticks' business, not this."""
    try:
        for warning in server_warnings(engine):
            log.warning(warning)
    except SQLAlchemyError as exc:
        log.debug("database settings not read: %s", exc)


def run_dispatcher(dispatcher: Dispatcher, *, stop: threading.Event | None = None) -> None:
    """Lead (or stand by) until SIGTERM, SIGINT or ``stop``; the caller built ``dispatcher``
    (its engine, Redis client and metrics) and disposes of them."""
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings, metrics, client = dispatcher.settings, dispatcher.metrics, dispatcher.redis
    log.info("dispatcher %s started (poll interval %ss)", dispatcher.lock.identity[:8],
             settings.poll_interval)
    log_server_warnings(dispatcher.engine)
    pusher = MetricsPusher(metrics.registry, client, dispatcher.keys, "dispatcher").start()
    serve_process_metrics(metrics.registry, settings.metrics_port)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                dispatcher.tick()
            except redis.RedisError as exc:
                log.error("Redis unavailable, retrying: %s", exc)
                dispatcher.lock.fence = None
            except SQLAlchemyError as exc:
                log.error("database unavailable, retrying: %s", exc)
            stop.wait(max(0.0, TICK_SECONDS - (time.monotonic() - started)))
    finally:
        with contextlib.suppress(redis.RedisError):
            dispatcher.lock.release()
        dispatcher.metrics.dispatcher_leader.set(0)
        pusher.stop()
        log.info("dispatcher stopped")
