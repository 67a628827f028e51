"""Prometheus metrics every process type records into its own registry.

Names follow ``paxyo_<subsystem>_<name>_<unit>``; labels are bounded sets (provider id, action,
outcome, status class, refund kind), never an order or user id. Counters and histograms here
are per process; :mod:`monitoring.push` ships each process's registry to Redis and
:mod:`monitoring.collectors` merges them for the web process's ``/metrics``. Values read at
scrape time from their source of truth (queue depth, lag, backlog...) live in
:mod:`monitoring.collectors`, not here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitoring.batched_histogram import BatchedHistogram
from paxyo.observations import ApplyReport
from paxyo.statuses import normalise_status

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5)


class Metrics:
    """All metrics of one process, registered on one registry.

    Each process builds its own at its entry point (:func:`process_metrics`) and passes it
    down; there is no module-level registry.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._orders(registry)
        self._providers(registry)
        self._dispatcher(registry)
        self._gateway(registry)
        self._webhooks(registry)

    def _orders(self, registry: CollectorRegistry) -> None:
        self.orders_checked = Counter(
            "paxyo_orders_checked_total", "Order status observations applied",
            ["provider"], registry=registry)
        self.status_transitions = Counter(
            "paxyo_order_status_transitions_total", "Order status changes, by status class",
            ["from_status", "to_status"], registry=registry)
        self.unknown_statuses = Counter(
            "paxyo_order_unknown_status_total", "Provider statuses that map to no known class",
            ["provider"], registry=registry)
        self.refunds = Counter(
            "paxyo_refunds_total", "Refund ledger entries written", ["kind"], registry=registry)
        self.refund_amount = Counter(
            "paxyo_refunded_amount_total", "Money refunded, in account currency units",
            ["kind"], registry=registry)

    def _providers(self, registry: CollectorRegistry) -> None:
        self.provider_requests = Counter(
            "paxyo_provider_requests_total", "Provider API requests by action and outcome",
            ["provider", "action", "outcome"], registry=registry)
        self.provider_latency = Histogram(
            "paxyo_provider_request_duration_seconds", "Provider API request latency",
            ["provider", "action"], buckets=LATENCY_BUCKETS, registry=registry)
        self.provider_bad_entries = Counter(
            "paxyo_provider_bad_entries_total",
            "Per-order entries in provider replies that could not be used",
            ["provider", "reason"], registry=registry)

    def _dispatcher(self, registry: CollectorRegistry) -> None:
        self.shards_enqueued = Counter(
            "paxyo_dispatcher_shards_enqueued_total", "Shards (RQ jobs) enqueued by the leader",
            registry=registry)
        self.dispatcher_plan_seconds = Histogram(
            "paxyo_dispatcher_plan_seconds",
            "Time the leader spends planning and leasing one tick's shards",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.dispatcher_leader = Gauge(
            "paxyo_dispatcher_leader", "1 while this dispatcher process holds the leadership",
            registry=registry)
        self.events_published = Counter(
            "paxyo_stream_events_published_total", "Outbox events written to Redis Streams",
            registry=registry)

    def _gateway(self, registry: CollectorRegistry) -> None:
        self.gateway_connections = Gauge(
            "paxyo_gateway_connections", "Open WebSocket connections", registry=registry)
        self.events_delivered = Counter(
            "paxyo_gateway_events_delivered_total", "Events written to WebSocket clients",
            registry=registry)
        self.delivery_latency = BatchedHistogram(  # observed once per batch of events
            "paxyo_gateway_delivery_latency_seconds",
            "Event creation to socket write", buckets=DELIVERY_BUCKETS, registry=registry)

    def _webhooks(self, registry: CollectorRegistry) -> None:
        self.webhook_deliveries = Counter(
            "paxyo_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, http_error, timeout, "
            "connection_error; failed when an event is given up)",
            ["outcome"], registry=registry)

    def count_applied(self, provider: str, report: ApplyReport) -> None:
        """Count a committed reply: orders checked, unusable entries, transitions, refunds."""
        if report.checked:
            self.orders_checked.labels(provider).inc(report.checked)
        if report.unknown:
            self.unknown_statuses.labels(provider).inc(report.unknown)
        for reason, count in (("bad_remains", report.bad_remains),
                              ("rejected", report.rejected)):
            if count:
                self.provider_bad_entries.labels(provider, reason).inc(count)
        for change in report.changes:
            if change.previous_status == change.status:
                continue  # progress (remains) only: an event for the user, not a transition
            self.status_transitions.labels(
                normalise_status(change.previous_status).cls.value,
                normalise_status(change.status).cls.value).inc()
            if change.refund > 0:
                kind = "canceled" if change.status == "Canceled" else "partial"
                self.refunds.labels(kind).inc()
                self.refund_amount.labels(kind).inc(float(change.refund))


def process_metrics() -> Metrics:
    """A new registry and its metrics, for the process an entry point is starting."""
    return Metrics(CollectorRegistry(auto_describe=True))
