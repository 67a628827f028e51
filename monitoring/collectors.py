"""Collectors behind the web process's ``/metrics``: the whole cluster, in one scrape.

- :class:`ClusterCollector`: every process's pushed registry, merged (:mod:`monitoring.aggregate`),
  after pushing this process's own snapshot first, so any web process answers with the same,
  fresh totals (on Heroku the router sends each scrape to any ``web`` dyno).
- :class:`SourceCollector`: gauges read at scrape time from their source of truth (database and
  Redis) through :mod:`paxyo.ops`, the same reads ``paxyo status`` prints.

A source that fails is reported by ``paxyo_metrics_source_up{source}`` = 0 and its series are
left out of that scrape (a gap, never a wrong value).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from monitoring.aggregate import read_cluster
from monitoring.push import MetricsPusher
from paxyo import ops
from paxyo.keys import Keys
from paxyo.settings import Settings

log = logging.getLogger("monitoring.collectors")


class ClusterCollector(Collector):
    """Every process's counters, histograms and live gauges, summed."""

    def __init__(self, client: redis.Redis, keys: Keys, own: MetricsPusher | None = None,
                 health: SourceHealth | None = None) -> None:
        self.client = client
        self.keys = keys
        self.own = own
        self.health = health or SourceHealth()

    def collect(self) -> Iterator[Metric]:
        try:
            if self.own is not None:
                self.own.push()
            view = read_cluster(self.client, self.keys)
        except redis.RedisError as exc:
            self.health.failed("metrics_redis", exc)
            return
        self.health.ok("metrics_redis")
        yield from (family.as_metric() for family in view.families.values())
        processes = GaugeMetricFamily("paxyo_processes", "Processes that pushed metrics lately",
                                      labels=["kind"])
        for kind in ("web", "worker", "dispatcher"):
            processes.add_metric([kind], view.live.get(kind, 0))
        yield processes


class SourceCollector(Collector):
    """Open orders, lag, backlog, queue, circuits and gateways, read at scrape time."""

    def __init__(self, settings: Settings, engine: Engine, client: redis.Redis,
                 health: SourceHealth | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.health = health or SourceHealth()

    def collect(self) -> Iterator[Metric]:
        providers: list[str] = []
        try:
            db = ops.read_database_status(self.engine)
        except Exception as exc:  # any database failure: leave these series out
            self.health.failed("database", exc)
        else:
            self.health.ok("database")
            providers = list(db.open_orders)
            yield from database_gauges(db, self.settings)
        try:
            rs = ops.read_redis_status(self.client, self.settings, providers)
        except redis.RedisError as exc:
            self.health.failed("redis", exc)
        else:
            self.health.ok("redis")
            yield from redis_gauges(rs)


class SourceHealth(Collector):
    """``paxyo_metrics_source_up{source}``: did the last scrape's read of a source work."""

    SOURCES = ("database", "redis", "metrics_redis")

    def __init__(self) -> None:
        self.up = dict.fromkeys(self.SOURCES, 1)

    def ok(self, source: str) -> None:
        self.up[source] = 1

    def failed(self, source: str, exc: Exception) -> None:
        if self.up[source]:
            log.warning("metrics: %s unreadable: %s", source, exc)
        self.up[source] = 0

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("paxyo_metrics_source_up",
                                   "1 when the last scrape could read this source",
                                   labels=["source"])
        for source, up in self.up.items():
            family.add_metric([source], up)
        yield family


def database_gauges(db: ops.DatabaseStatus, settings: Settings) -> Iterator[Metric]:
    open_orders = GaugeMetricFamily("paxyo_open_orders", "Orders not yet in a final status",
                                    labels=["provider"])
    for provider, count in sorted(db.open_orders.items()):
        open_orders.add_metric([provider], count)
    yield open_orders
    yield GaugeMetricFamily("paxyo_orders_due", "Open orders whose check time has come",
                            value=db.due_now)
    yield GaugeMetricFamily("paxyo_dispatcher_lag_seconds",
                            "How late the most overdue open order is", value=db.lag_seconds)
    yield GaugeMetricFamily("paxyo_dispatcher_poll_interval_seconds",
                            "Configured seconds between checks of an open order",
                            value=settings.poll_interval)
    yield GaugeMetricFamily("paxyo_outbox_backlog", "Outbox events not yet published to Redis",
                            value=db.outbox_backlog)
    yield GaugeMetricFamily("paxyo_webhook_backlog",
                            "Events queued for webhook delivery and not yet delivered",
                            value=db.webhook_backlog)


def redis_gauges(rs: ops.RedisStatus) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("paxyo_queue_jobs", "RQ jobs of the shard queue, by state",
                             labels=["state"])
    for state in ("queued", "started", "scheduled", "failed"):
        jobs.add_metric([state], getattr(rs.queue, state))
    yield jobs
    circuits = GaugeMetricFamily(
        "paxyo_provider_circuit_state",
        "Circuit breaker per provider: 0 closed, 1 half-open (probing), 2 open",
        labels=["provider"])
    for provider, state in rs.circuits.items():
        circuits.add_metric([provider], ops.CIRCUIT_LEVELS[state])
    yield circuits
    yield GaugeMetricFamily("paxyo_gateways_up", "Gateways with a recent heartbeat",
                            value=rs.gateways_up)
    if rs.dispatcher.heartbeat_at is not None:
        yield GaugeMetricFamily("paxyo_dispatcher_last_tick_timestamp_seconds",
                                "When the leading dispatcher last ticked (Unix time)",
                                value=rs.dispatcher.heartbeat_at)


def cluster_registry(settings: Settings, engine: Engine, client: redis.Redis,
                     own: MetricsPusher | None = None) -> CollectorRegistry:
    """The registry the web process's ``/metrics`` renders (no own metrics registered on it)."""
    registry = CollectorRegistry(auto_describe=False)
    health = SourceHealth()
    registry.register(ClusterCollector(client, Keys(settings.redis_prefix), own, health))
    registry.register(SourceCollector(settings, engine, client, health))
    registry.register(health)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Text exposition format (blocking: run it off the event loop)."""
    return generate_latest(registry)
