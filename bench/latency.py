"""Change to screen: from an order's change at the provider to its event on the user's socket.

    python bench/latency.py [--orders 10000] [--poll-interval 15] [--flips 300] [--workers 2]
                            [--database-url URL] [--redis-url URL]

N open orders (1,000 users) on two simulated providers, with their next checks spread over one
poll interval as in a running system; a dispatcher, W workers and one gateway; a WebSocket
client for each of the 100 users whose orders get flipped. After one interval of warm-up it
cancels ``--flips`` random orders at the simulators, spread over two intervals, and records
for each the time from the flip to the ``order.updated`` event arriving at its user's socket.
Prints p50 / p99 / max beside the poll interval (an order changed just after its check waits
up to one interval for the next). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import (  # noqa: E402
    PROVIDERS,
    USERS,
    Processes,
    _answers_http,
    _drop_redis_keys,
    bench_redis,
    free_port,
    fresh_database,
    provider_env,
    provider_of,
    seed_database,
    seed_simulators,
    start_simulators,
    wait_for,
)

from paxyo.clock import utcnow  # noqa: E402
from paxyo.store.engine import open_engine  # noqa: E402
from paxyo.store.schema import orders  # noqa: E402
from wsgateway.auth import mint_token  # noqa: E402

WATCHED_USERS = 100
SECRET = "bench-jwt-secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def measure(gateway: str, sims: dict[str, str], candidates: list[int], flips: int,
                  spread: float, settle: float) -> tuple[dict[int, float], int]:
    """Flip orders at their simulator; returns order -> seconds to the socket, and flips."""
    flipped_at: dict[int, float] = {}
    latency: dict[int, float] = {}

    async def watch(session: aiohttp.ClientSession, user: int) -> None:
        url = f"{gateway}/ws?token={mint_token(SECRET, user, ttl=7200)}"
        async with session.ws_connect(url, heartbeat=None) as ws:
            async for message in ws:
                event = orjson.loads(message.data)
                oid = event.get("order_id")
                if event.get("status") == "Canceled" and oid in flipped_at:
                    latency.setdefault(oid, time.time() - flipped_at[oid])

    # sockets in a session of their own: they would hold every connection of a shared pool
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sockets, \
            aiohttp.ClientSession() as session:
        watchers = [asyncio.create_task(watch(sockets, u)) for u in range(1, WATCHED_USERS + 1)]
        await asyncio.sleep(1)
        chosen = random.Random(7).sample(candidates, min(flips, len(candidates)))
        gap = spread / max(1, len(chosen))
        for oid in chosen:
            base = sims[provider_of(oid)]
            flipped_at[oid] = time.time()
            async with session.post(f"{base}/sim/orders/{oid}",
                                    json={"status": "Canceled", "remains": 1000}) as reply:
                reply.raise_for_status()
            await asyncio.sleep(gap)
        deadline = time.monotonic() + settle
        while len(latency) < len(chosen) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return latency, len(chosen)


def run(args: argparse.Namespace, redis_url: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="paxyo-latency-"))
    url = fresh_database(args.database_url, workdir)
    seed_database(url, args.orders)
    engine = open_engine(url)
    # a running system: each order's next check somewhere in the coming interval
    now = utcnow()
    rng = random.Random(1)
    with engine.begin() as conn:
        ids = [row.id for row in conn.execute(sa.select(orders.c.id))]
        for start in range(0, len(ids), 5000):
            conn.execute(sa.update(orders).where(orders.c.id == sa.bindparam("oid"))
                         .values(next_check_at=sa.bindparam("due")),
                         [{"oid": oid, "due": now + timedelta(
                             seconds=rng.uniform(0, args.poll_interval))}
                          for oid in ids[start:start + 5000]])
    prefix = f"paxyolat:{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in PROVIDERS}
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "PORT": str(port),
           "PAXYO_REDIS_PREFIX": prefix, "PAXYO_QUEUE": f"{prefix}-q",
           "PAXYO_POLL_INTERVAL": str(args.poll_interval), "PAXYO_JWT_SECRET": SECRET,
           "PAXYO_ADMIN_TOKEN": "bench-admin", "PAXYO_PROVIDER_RATE_LIMIT": "100000",
           "PAXYO_LOG_FORMAT": "text"}
    env.update(provider_env(ports))
    procs = Processes(workdir, env)
    try:
        sims = start_simulators(procs, ports)
        seed_simulators(sims, args.orders)
        procs.start("gateway", "gateway", "--host", "127.0.0.1")
        procs.start("dispatcher", "dispatcher")
        for i in range(args.workers):
            procs.start(f"worker-{i}", "worker")
        gateway = f"http://127.0.0.1:{port}"
        wait_for("the gateway", lambda: _answers_http(f"{gateway}/healthz"), 30)
        print(f"warming up for one poll interval ({args.poll_interval}s)...", flush=True)
        time.sleep(args.poll_interval)
        with engine.connect() as conn:  # open orders of the watched users, not yet final
            candidates = [row.id for row in conn.execute(
                sa.select(orders.c.id).where(orders.c.user_id.between(1, WATCHED_USERS),
                                             orders.c.status_class == "open"))]
        latency, flips = asyncio.run(measure(
            gateway, sims, candidates, args.flips, spread=2 * args.poll_interval,
            settle=args.poll_interval + 15))
    finally:
        procs.stop()
        engine.dispose()
        _drop_redis_keys(redis_url, prefix)
    values = list(latency.values())
    db = url.split(":", 1)[0]
    print(f"\n{args.orders} open orders, {db}, {args.workers} workers, poll interval "
          f"{args.poll_interval}s: {len(values)} of {flips} flips reached a socket\n")
    print("| p50 s | p99 s | max s | poll interval s | p99 - interval s |\n|---|---|---|---|---|")
    if values:
        p99 = percentile(values, 0.99)
        print(f"| {percentile(values, 0.5):.2f} | {p99:.2f} | {max(values):.2f} | "
              f"{args.poll_interval} | {p99 - args.poll_interval:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--poll-interval", type=int, default=15)
    parser.add_argument("--flips", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", help="default: a fresh SQLite file; a given "
                        "database is emptied (tables dropped) first")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    assert USERS >= WATCHED_USERS
    with bench_redis(args.redis_url) as redis_url:
        run(args, redis_url)


if __name__ == "__main__":
    main()
