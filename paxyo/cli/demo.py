"""``paxyo demo``: the whole system on one machine with embedded defaults.

Starts (as child processes) the provider simulator, a dispatcher, workers and the gateway,
with a throwaway SQLite file, the Redis at REDIS_URL or a private one when none answers, and
demo accounts and orders. The seeded orders follow slow schedules at the simulator
(:data:`SEED_ORDERS`), so that someone who opens the page minutes later still sees them move.
The webhook sender (``paxyo webhooks run``) runs too, pointed at the demo's own receiver
(``POST /demo/webhook``, :mod:`paxyo.cli.demo_webhooks`) with a random secret. Ctrl-C (or
SIGTERM) stops every child cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiohttp

from paxyo.accounts import deposit
from paxyo.cli.private_redis import PrivateRedis, answers
from paxyo.orders import NewOrder, place_order
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from paxyo.store.migrate import MigrationError, upgrade
from providers.client import ProviderClient, ProviderConfig

log = logging.getLogger("paxyo.demo")

PROVIDER = "demo"
# Redis key prefix and queue name, one per port: two demos on one Redis (a shared machine,
# tests running side by side) must not lead each other's dispatchers or delete each other's
# keys. A demo's database is new each run, and so are its keys (reset_demo_redis).
REDIS_PREFIX = "paxyo-demo-{port}"
PROVIDER_KEY = "demo-provider-key"
DEMO_POLL_INTERVAL = 5.0
DEMO_USERS = {111: Decimal("150.00"), 222: Decimal("100.00")}
PRICE_PER_1000 = Decimal("10.00")  # the panel's own price in the demo, whatever the service
WEBHOOK_PATH = "/demo/webhook"


@dataclass(frozen=True)
class SeedOrder:
    """A demo order and its schedule at the simulator, in seconds from the start: Pending for
    ``pending``, In progress for ``running`` (remains falling in steps), then ``ends``."""

    user_id: int
    service: int
    quantity: int
    pending: float
    running: float
    ends: str
    remains: int = 0

    def schedule(self) -> dict[str, object]:
        return {"pending": self.pending, "running": self.running, "ends": self.ends,
                "remains": self.remains}


# Something ends every minute or so for the first six: completions, Partial and Canceled
# refunds, for both users, with remains falling in between.
SEED_ORDERS = (
    SeedOrder(111, 1, 1000, 3, 45, "Completed"),
    SeedOrder(222, 1, 2000, 5, 85, "Partial", remains=800),
    SeedOrder(111, 2, 500, 15, 105, "Partial", remains=150),
    SeedOrder(222, 3, 1000, 150, 0, "Canceled", remains=1000),
    SeedOrder(111, 3, 2000, 40, 170, "Completed"),
    SeedOrder(111, 4, 1000, 270, 0, "Canceled", remains=1000),
    SeedOrder(222, 2, 500, 30, 300, "Completed"),
    SeedOrder(111, 1, 3000, 20, 340, "Completed"),
)


def demo_charge(quantity: int) -> Decimal:
    return (PRICE_PER_1000 * quantity / 1000).quantize(Decimal("0.01"))


@dataclass
class Children:
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then stops each
        # child with one SIGTERM (a second signal would make RQ workers stop cold).
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "paxyo.cli", *args], env=env, start_new_session=True)

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def stop(self, grace: float = 10.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _demo_link(seed: SeedOrder) -> str:
    return f"https://instagram.com/demo{seed.user_id}"


async def _place_demo_orders(config: ProviderConfig, simulator: str) -> list[str]:
    """Place SEED_ORDERS at the simulator and give each its schedule; their provider ids."""
    placed = []
    async with aiohttp.ClientSession() as session:
        client = ProviderClient(config, session, timeout=5)
        for seed in SEED_ORDERS:
            provider_order_id = await client.add(seed.service, _demo_link(seed), seed.quantity)
            async with session.post(f"{simulator}/sim/orders/{provider_order_id}",
                                    json={"schedule": seed.schedule()},
                                    timeout=aiohttp.ClientTimeout(total=5)) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"the simulator refused a schedule: {await reply.text()}")
            placed.append(provider_order_id)
    return placed


def seed_demo(settings: Settings, config: ProviderConfig, simulator: str) -> None:
    """Deposit the demo users' balances and place SEED_ORDERS (ids 1, 2, ...)."""
    engine = open_engine(settings.database_url)
    try:
        for user_id, amount in DEMO_USERS.items():
            deposit(engine, user_id, amount, f"demo-welcome-{user_id}", settings.money_decimals,
                    webhook=settings.webhooks_enabled)
        placed = asyncio.run(_place_demo_orders(config, simulator))
        for number, (seed, provider_order_id) in enumerate(zip(SEED_ORDERS, placed,
                                                                strict=True), start=1):
            place_order(engine, NewOrder(
                id=number, user_id=seed.user_id, provider=PROVIDER,
                provider_order_id=provider_order_id, quantity=seed.quantity,
                charge=demo_charge(seed.quantity), service=str(seed.service),
                link=_demo_link(seed)),
                decimals=settings.money_decimals, poll_interval=settings.poll_interval,
                webhook=settings.webhooks_enabled)
    finally:
        engine.dispose()


def reset_demo_redis(redis_url: str, prefix: str) -> None:
    """Forget the previous demo run: its events, history and queued jobs name orders of a
    database that no longer exists (and its event ids would shadow the new ones)."""
    import redis
    from rq import Queue

    client = redis.Redis.from_url(redis_url)
    try:
        Queue(prefix, connection=client).empty()
        # the demo's own keys, then RQ's registries of its queue (rq:finished:<queue>, ...)
        for pattern in (f"{prefix}:*", f"rq:*:{prefix}", f"rq:queue:{prefix}:*"):
            stale = list(client.scan_iter(match=pattern, count=1000))
            if stale:
                client.delete(*stale)
    finally:
        client.close()


def run_demo(base: Settings, *, port: int, workers: int = 2, host: str = "127.0.0.1") -> int:
    """Run until Ctrl-C or SIGTERM (exit 0, whenever it comes) or until a child exits (1)."""
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: children first
    private_redis: PrivateRedis | None = None
    children = Children()
    forget: tuple[str, str] | None = None  # (Redis URL, prefix) of keys to delete at the end
    try:
        env_has_db = "DATABASE_URL" in os.environ
        database_url = base.database_url if env_has_db else \
            f"sqlite:///{Path.cwd() / 'paxyo-demo.db'}"
        if not env_has_db:
            for suffix in ("", "-wal", "-shm"):
                Path.cwd().joinpath(f"paxyo-demo.db{suffix}").unlink(missing_ok=True)
        redis_url = base.redis_url
        if not answers(redis_url):
            private_redis = PrivateRedis(_free_port())
            redis_url = private_redis.start()
            print(f"No Redis answered at {base.redis_url}: started a private one at {redis_url}")
        prefix = REDIS_PREFIX.format(port=port)
        reset_demo_redis(redis_url, prefix)
        forget = None if private_redis is not None else (redis_url, prefix)
        sim_port = _free_port()
        provider_url = f"http://127.0.0.1:{sim_port}/api/v2"
        poll = base.poll_interval if "PAXYO_POLL_INTERVAL" in os.environ else DEMO_POLL_INTERVAL
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PORT": str(port),
            "PAXYO_DEMO": "1",
            "PAXYO_REDIS_PREFIX": prefix,
            "PAXYO_QUEUE": prefix,
            "PAXYO_POLL_INTERVAL": str(poll),
            f"PAXYO_PROVIDER_{PROVIDER.upper()}_URL": provider_url,
            f"PAXYO_PROVIDER_{PROVIDER.upper()}_KEY": PROVIDER_KEY,
            "PAXYO_JWT_SECRET": base.jwt_secret or secrets.token_urlsafe(32),
            "PAXYO_ADMIN_TOKEN": base.admin_token or secrets.token_urlsafe(24),
            "PAXYO_WEBHOOK_URL": f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
            "PAXYO_WEBHOOK_SECRET": secrets.token_urlsafe(32),
        }
        settings = Settings.from_env(env)
        children.start("simulator", ["simulator", "--port", str(sim_port),
                                     "--key", PROVIDER_KEY, "--seed", "1"], env)
        _wait_http(f"http://127.0.0.1:{sim_port}/sim/stats")
        upgrade(database_url)
        seed_demo(settings, settings.providers[PROVIDER], f"http://127.0.0.1:{sim_port}")
        children.start("dispatcher", ["dispatcher"], env)
        for n in range(workers):
            children.start(f"worker.{n + 1}", ["worker"], env)
        children.start("web", ["gateway", "--host", host], env)
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        # after the gateway is up, so that its receiver answers the first delivery
        children.start("webhooks", ["webhooks", "run"], env)
        _banner(host, port, env, poll)
        while (gone := children.exited()) is None:
            time.sleep(0.5)
        print(f"paxyo demo: {gone[0]} exited with code {gone[1]}; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the demo...", flush=True)
        return 0
    except MigrationError as exc:
        print(f"paxyo demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop()
        if forget is not None:
            _forget_demo_redis(*forget)
        if private_redis is not None:
            private_redis.stop()  # last: the children use it until they are gone


def _forget_demo_redis(redis_url: str, prefix: str) -> None:
    """Leave no keys behind in a Redis the demo shares (each port has its own prefix)."""
    import redis

    try:
        reset_demo_redis(redis_url, prefix)
    except redis.RedisError as exc:
        print(f"paxyo demo: could not delete its Redis keys ({prefix}:*): {exc}",
              file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _banner(host: str, port: int, env: dict[str, str], poll: float) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"""
Paxyo Realtime demo is running.
  Demo page:    http://{shown}:{port}/
  HTTP API:     http://{shown}:{port}/v1  (Authorization: Bearer {env['PAXYO_ADMIN_TOKEN']})
  Metrics:      http://{shown}:{port}/metrics
  Simulator:    {env['PAXYO_PROVIDER_DEMO_URL']}  (key {PROVIDER_KEY})
  Webhooks:     {env['PAXYO_WEBHOOK_URL']}  (secret {env['PAXYO_WEBHOOK_SECRET']})
  Poll interval {poll:g}s; demo users {', '.join(map(str, DEMO_USERS))}. Ctrl-C stops everything.
""", flush=True)
