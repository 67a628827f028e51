"""``paxyo worker``: an RQ worker on the project's queue, with the scheduler for retries."""

from __future__ import annotations

import logging

import redis
from rq import Queue
from rq.worker import SimpleWorker

from monitoring.metrics import REGISTRY
from monitoring.push import MetricsPusher, serve_process_metrics
from paxyo.keys import Keys
from paxyo.settings import Settings
from workers.context import current_context

log = logging.getLogger("paxyo.workers")


class ShardWorker(SimpleWorker):
    """Runs jobs in the worker process itself (no fork per job): the database pool, Redis
    connection and provider settings stay warm between shards.

    SIGTERM asks for a warm shutdown: the job in flight finishes (a job is one bounded provider
    call and its apply) and the worker exits; a second signal stops at once. A job cut off by
    SIGKILL is harmless: its orders' leases expire and a later shard checks them again.
    """


def queue_for(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue_name, connection=connection)


def run_worker(settings: Settings, *, burst: bool = False, max_jobs: int | None = None) -> bool:
    settings.require_providers()
    ctx = current_context()  # fail fast on bad settings, warm the pools
    connection = redis.Redis.from_url(settings.redis_url)
    worker = ShardWorker([queue_for(settings, connection)], connection=connection)
    log.info("worker %s on queue %s (%d providers)", worker.name, settings.queue_name,
             len(ctx.settings.providers))
    # metrics: push this process's registry for web's /metrics (and serve it, if a port is set)
    pusher = MetricsPusher(REGISTRY, connection, Keys(settings.redis_prefix), "worker").start()
    serve_process_metrics(REGISTRY, settings.metrics_port)
    try:
        return worker.work(burst=burst, with_scheduler=True, max_jobs=max_jobs,
                           logging_level="WARNING")
    finally:
        pusher.stop()
        ctx.close()
