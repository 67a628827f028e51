"""Pushing registries to Redis and merging them: sums, live gauges, totals that never go back."""

from __future__ import annotations

import time

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from monitoring import aggregate
from monitoring.collectors import cluster_registry
from monitoring.metrics import Metrics
from monitoring.push import MetricsPusher, snapshot
from paxyo.keys import Keys


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def worker_metrics(checked: int, latency: float = 0.2) -> Metrics:
    metrics = Metrics(CollectorRegistry())
    metrics.orders_checked.labels("sim").inc(checked)
    metrics.provider_latency.labels("sim", "status").observe(latency)
    metrics.gateway_connections.set(checked)
    return metrics


def value(view: aggregate.ClusterView, name: str, sample: str, **labels: str) -> float:
    key = (sample, tuple(sorted(labels.items())))
    return view.families[name].values.get(key, 0.0)


def test_counters_and_histograms_are_summed_across_processes(client, redis_prefix):
    keys = Keys(redis_prefix)
    for checked in (3, 4):
        MetricsPusher(worker_metrics(checked).registry, client, keys, "worker").push()
    view = aggregate.read_cluster(client, keys)
    assert value(view, "paxyo_orders_checked", "paxyo_orders_checked_total",
                 provider="sim") == 7
    latency = "paxyo_provider_request_duration_seconds"
    assert value(view, latency, latency + "_count", provider="sim", action="status") == 2
    assert value(view, latency, latency + "_bucket", provider="sim", action="status",
                 le="0.25") == 2
    assert value(view, latency, latency + "_bucket", provider="sim", action="status",
                 le="0.1") == 0
    assert view.live == {"worker": 2}


def test_gauges_count_only_live_processes_but_counters_of_dead_ones_stay(client, redis_prefix):
    keys = Keys(redis_prefix)
    now = time.time()
    client.hset(keys.metrics, "web:a", snapshot(worker_metrics(5).registry, "web", now))
    client.hset(keys.metrics, "web:dead", snapshot(worker_metrics(2).registry, "web", now - 60))
    view = aggregate.read_cluster(client, keys, now)
    assert value(view, "paxyo_gateway_connections", "paxyo_gateway_connections") == 5
    assert value(view, "paxyo_orders_checked", "paxyo_orders_checked_total",
                 provider="sim") == 7
    assert view.live == {"web": 1}


def test_expired_snapshots_are_folded_so_totals_never_go_backwards(client, redis_prefix):
    keys = Keys(redis_prefix)
    now = time.time()
    old = now - aggregate.RETAIN_SECONDS - 1
    client.hset(keys.metrics, "worker:gone", snapshot(worker_metrics(10).registry, "worker", old))
    client.hset(keys.metrics, "worker:alive", snapshot(worker_metrics(1).registry, "worker", now))
    total = ("paxyo_orders_checked", "paxyo_orders_checked_total")
    assert value(aggregate.read_cluster(client, keys, now), *total, provider="sim") == 11
    fields = {f.decode() for f in client.hkeys(keys.metrics)}
    assert fields == {"worker:alive", aggregate.RETIRED_FIELD}
    assert value(aggregate.read_cluster(client, keys, now), *total, provider="sim") == 11
    # the folded process comes back (cut off from Redis for a long time): never counted twice
    client.hset(keys.metrics, "worker:gone", snapshot(worker_metrics(12).registry, "worker", now))
    assert value(aggregate.read_cluster(client, keys, now), *total, provider="sim") == 11


def test_a_concurrent_change_makes_the_fold_step_aside(client, redis_prefix):
    keys = Keys(redis_prefix)
    now = time.time()
    old = now - aggregate.RETAIN_SECONDS - 1
    client.hset(keys.metrics, "worker:gone", snapshot(worker_metrics(10).registry, "worker", old))
    raw = client.hgetall(keys.metrics)
    client.hset(keys.metrics, aggregate.RETIRED_FIELD,
                orjson.dumps({"families": [], "gone": {"x": now}}))  # someone folded meanwhile
    assert not aggregate.fold_expired(client, keys, raw, now)
    assert client.hexists(keys.metrics, "worker:gone")


def test_pusher_thread_pushes_and_pushes_a_last_time_on_stop(client, redis_prefix):
    keys = Keys(redis_prefix)
    metrics = worker_metrics(1)
    pusher = MetricsPusher(metrics.registry, client, keys, "dispatcher", interval=0.05).start()
    time.sleep(0.2)
    metrics.orders_checked.labels("sim").inc(41)
    pusher.stop()
    snap = orjson.loads(client.hget(keys.metrics, pusher.process_id))
    assert snap["kind"] == "dispatcher"
    family = next(f for f in snap["families"] if f["name"] == "paxyo_orders_checked")
    assert family["samples"] == [["paxyo_orders_checked_total", {"provider": "sim"}, 42.0]]
    assert pusher.process_id.startswith("dispatcher:")


def test_push_failure_is_logged_once_and_does_not_raise(caplog, redis_prefix):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    pusher = MetricsPusher(worker_metrics(1).registry, dead, Keys(redis_prefix), "worker")
    assert not pusher.push_quietly()
    assert not pusher.push_quietly()
    assert len([r for r in caplog.records if "metrics push" in r.message]) == 1


def test_cluster_registry_serves_merged_metrics_and_source_gauges(
        client, redis_prefix, settings, engine):
    keys = Keys(redis_prefix)
    MetricsPusher(worker_metrics(3).registry, client, keys, "worker").push()
    own = MetricsPusher(worker_metrics(2).registry, client, keys, "web")
    text = generate_latest(cluster_registry(settings, engine, client, own=own)).decode()
    assert 'paxyo_orders_checked_total{provider="sim"} 5.0' in text
    assert 'paxyo_processes{kind="worker"} 1.0' in text
    assert 'paxyo_processes{kind="web"} 1.0' in text  # pushed itself at scrape time
    assert 'paxyo_queue_jobs{state="queued"} 0.0' in text
    assert 'paxyo_provider_circuit_state{provider="sim"} 0.0' in text
    assert "paxyo_dispatcher_lag_seconds 0.0" in text
    assert 'paxyo_metrics_source_up{source="database"} 1.0' in text
    assert "_created" not in text


def test_an_unreadable_source_leaves_a_gap_and_says_so(redis_prefix, settings, engine):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    text = generate_latest(cluster_registry(settings, engine, dead)).decode()
    assert 'paxyo_metrics_source_up{source="redis"} 0.0' in text
    assert 'paxyo_metrics_source_up{source="metrics_redis"} 0.0' in text
    assert 'paxyo_metrics_source_up{source="database"} 1.0' in text
    assert "paxyo_outbox_backlog 0.0" in text  # the database part still answers
    assert "paxyo_queue_jobs" not in text


def test_metric_names_follow_the_conventions():
    metrics = Metrics(CollectorRegistry())
    for family in metrics.registry.collect():
        assert family.name.startswith("paxyo_")
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        for sample in family.samples:
            assert not {"order_id", "user_id", "order", "user"} & set(sample.labels)
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE paxyo_orders_checked_total counter" in text


def test_batched_histogram_exposes_what_prometheus_clients_histogram_would() -> None:
    from prometheus_client import Histogram

    from monitoring.batched_histogram import BatchedHistogram

    values = [0.0, 0.0005, 0.001, 0.004, 0.005, 0.3, 1.0, 7.0]  # bounds fall in their bucket
    reference, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("paxyo_x_seconds", "x", buckets=(0.001, 0.005, 1), registry=reference)
    for v in values:
        histogram.observe(v)
    ours = BatchedHistogram("paxyo_x_seconds", "x", buckets=(0.001, 0.005, 1), registry=batched)
    ours.observe_many(values[:3])
    ours.observe_many(values[3:])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value
                for family in registry.collect() for s in family.samples
                if not s.name.endswith("_created")}

    expected, got = samples(reference), samples(batched)
    assert got.keys() == expected.keys()
    assert got.pop(("paxyo_x_seconds_sum", "")) == pytest.approx(
        expected.pop(("paxyo_x_seconds_sum", "")))
    assert got == expected
    assert got[("paxyo_x_seconds_bucket", "0.005")] == 5
