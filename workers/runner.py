"""``paxyo worker``: an RQ worker on the project's queue, with the scheduler for retries.

The worker rides out Redis outages, at start and later, instead of exiting: RQ's worker and
scheduler let a connection error escape from most of their Redis calls (birth, heartbeat,
state, maintenance, the scheduler's loop, death). Each of those steps here waits until Redis
answers again (:class:`RedisOutage`: one log line per outage, one when it is back) and
carries on; a stop request ends the wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from rq import Queue, worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout, StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import now
from rq.worker import SimpleWorker

from monitoring.push import MetricsPusher, serve_process_metrics
from paxyo.keys import Keys
from paxyo.settings import Settings
from workers.context import ContextJob, WorkerContext
from workers.redis_outage import REDIS_DOWN, RedisOutage

log = logging.getLogger("paxyo.workers")

T = TypeVar("T")


class ShardQueue(Queue):
    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        """RQ's, where a lost connection ends the blocking pop like its timeout: RQ's loop then
        calls :meth:`ShardWorker.heartbeat`, which waits Redis out (RQ's own retry would log
        every attempt)."""
        try:
            return super().dequeue_any(*args, **kwargs)
        except REDIS_DOWN as exc:
            raise DequeueTimeout(str(exc)) from exc


class ShardScheduler(RQScheduler):
    """RQ's scheduler (it puts retried shards back on the queue when their delay is up), in its
    own process, waiting out Redis outages quietly (the worker reports them) instead of dying
    with a traceback."""

    def __init__(self, *args: Any, redis_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_url = redis_url

    def work(self) -> None:
        self._install_signal_handlers()
        outage = RedisOutage(self.redis_url, self.log, level=logging.DEBUG)
        registered = False
        worker = os.getppid()

        def stopping() -> bool:
            # A worker killed outright (SIGKILL) leaves its scheduler behind: without this it
            # would wait for its Redis forever, an orphan.
            return self._stop_requested or os.getppid() != worker

        while not stopping():
            try:
                if not registered:  # again after an outage: Redis may have lost it
                    self.register_birth()
                    registered = True
                if self.should_reacquire_locks:
                    self.acquire_locks()
                self.heartbeat()
                self.enqueue_scheduled_jobs()
            except REDIS_DOWN as exc:
                registered = False
                outage.wait(exc, stopping=stopping)
                continue
            time.sleep(self.interval)
        with contextlib.suppress(*REDIS_DOWN):
            self.stop()  # releases its locks; they expire on their own if Redis is down
        outage.close()


class ShardWorker(SimpleWorker):
    """Runs jobs in the worker process itself (no fork per job): the database pool, Redis
    connection and provider settings stay warm between shards.

    SIGTERM asks for a warm shutdown: the job in flight finishes (a job is one bounded provider
    call and its apply) and the worker exits; a second signal stops at once. A job cut off by
    SIGKILL is harmless: its orders' leases expire and a later shard checks them again.
    """

    queue_class = ShardQueue
    job_class = ContextJob

    def __init__(self, *args: Any, context: WorkerContext, outage: RedisOutage, redis_url: str,
                 **kwargs: Any) -> None:
        self.context = context
        self.outage = outage
        self.redis_url = redis_url
        super().__init__(*args, **kwargs)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """RQ's, with the job handed this worker's context (see workers.context.job_context)."""
        if isinstance(job, ContextJob):
            job.context = self.context
        try:
            return super().perform_job(job, queue)
        finally:
            if isinstance(job, ContextJob):
                job.context = None

    # -- waiting Redis out ------------------------------------------------------------------

    def _ride_out(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``step(...)``, run again once Redis is back for as long as Redis is down."""
        interrupted = False
        while True:
            try:
                if interrupted:
                    self._rejoin()
                return step(*args, **kwargs)
            except REDIS_DOWN as exc:
                interrupted = True
                self._wait_for_redis(exc)

    def _wait_for_redis(self, exc: Exception) -> None:
        # A stop request while idle raises StopRequested from RQ's signal handler; while a job
        # ran it only sets _stop_requested, which ends the wait here.
        if not self.outage.wait(exc, stopping=lambda: self._stop_requested):
            raise StopRequested from None

    def _rejoin(self) -> None:
        """Write this worker's registration again: a Redis restarted without its data has
        forgotten it (the dispatcher sizes the queue by the registered workers)."""
        if self.birth_date is None:
            return
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, self.worker_ttl + 60)
            pipeline.execute()

    # -- RQ's steps that talk to Redis ------------------------------------------------------

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        self._ride_out(super().bootstrap, *args, **kwargs)

    def register_birth(self) -> None:
        """RQ's, without its refusal when a live worker of this name exists: the name is a new
        uuid, so that can only be this worker's own birth whose reply an outage cut off."""
        self.birth_date = self.last_heartbeat = now()
        self._rejoin()

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                         log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        """RQ's, with :class:`ShardScheduler`."""
        scheduler = ShardScheduler(
            self.queues, connection=self.connection, redis_url=self.redis_url,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format, log_format=log_format, serializer=self.serializer)
        self.scheduler = scheduler
        self._ride_out(scheduler.acquire_locks)
        if not scheduler.acquired_locks:
            return
        if burst:
            self._ride_out(_enqueue_due_once, scheduler)
        else:
            scheduler.start()

    def check_for_suspension(self, burst: bool) -> None:
        self._ride_out(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._ride_out(super().run_maintenance_tasks)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
        else:
            self._ride_out(super().set_state, state)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
        else:
            self._ride_out(super().heartbeat, timeout)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            # RQ's record of this job may be lost; whatever the job applied stands, and its
            # orders are checked again once their leases expire.
            self._wait_for_redis(exc)
            self._ride_out(self._rejoin)

    def set_shutdown_requested_date(self) -> None:
        with contextlib.suppress(*REDIS_DOWN):  # called from the SIGTERM handler
            super().set_shutdown_requested_date()

    def register_death(self) -> None:
        try:
            super().register_death()
        except REDIS_DOWN:
            log.info("worker %s stopped without Redis; its registration expires on its own",
                     self.name)

    def unsubscribe(self) -> None:
        try:
            super().unsubscribe()
        except REDIS_DOWN:
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """The command channel's thread retries quietly: the main loop reports the outage."""
        if not isinstance(exc, REDIS_DOWN):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)
            return
        time.sleep(2.0)


def _enqueue_due_once(scheduler: RQScheduler) -> None:
    """``--burst``: move due retries onto the queue once, without a scheduler process."""
    try:
        scheduler.register_birth()
        scheduler.enqueue_scheduled_jobs()
    finally:
        with contextlib.suppress(*REDIS_DOWN):
            scheduler.release_locks()
            scheduler.register_death()


def queue_for(settings: Settings, connection: redis.Redis) -> ShardQueue:
    return ShardQueue(settings.queue_name, connection=connection)


def _stop_before_work(signum: int, frame: object) -> None:
    raise StopRequested


def run_worker(ctx: WorkerContext, *, burst: bool = False, max_jobs: int | None = None) -> bool:
    """Take shard jobs with ``ctx`` (built by the entry point from the settings its command
    line parsed) until stopped; the caller closes ``ctx``."""
    settings, metrics = ctx.settings, ctx.metrics
    outage = RedisOutage(settings.redis_url, log)
    connection = redis.Redis.from_url(settings.redis_url)
    serve_process_metrics(metrics.registry, settings.metrics_port)
    pusher: MetricsPusher | None = None
    # Until RQ installs its own handlers (once it is registered), SIGTERM or Ctrl-C ends a
    # wait for Redis at once.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_work)
    try:
        worker = _new_worker(settings, connection, outage, ctx)
        log.info("worker %s on queue %s (%d providers)", worker.name, settings.queue_name,
                 len(ctx.settings.providers))
        # push this process's registry for web's /metrics (Redis answers by now)
        pusher = MetricsPusher(metrics.registry, connection, Keys(settings.redis_prefix),
                               "worker").start()
        return worker.work(burst=burst, with_scheduler=True, max_jobs=max_jobs,
                           logging_level="WARNING")
    except StopRequested:
        log.info("worker stopped before it started working")
        return False
    finally:
        if pusher is not None:
            pusher.stop()
        outage.close()


def _new_worker(settings: Settings, connection: redis.Redis, outage: RedisOutage,
                context: WorkerContext) -> ShardWorker:
    while True:  # RQ's constructor already talks to Redis (CLIENT SETNAME)
        try:
            return ShardWorker([queue_for(settings, connection)], connection=connection,
                               context=context, outage=outage, redis_url=settings.redis_url)
        except REDIS_DOWN as exc:
            outage.wait(exc)
