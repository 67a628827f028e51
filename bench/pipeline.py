"""Pipeline benchmark: N open orders, 2 simulated providers, one dispatcher, W workers.

    python bench/pipeline.py [--orders 10000,100000] [--workers 1,2,4] [--latency-ms 200]
                             [--database-url URL] [--redis-url URL]

For each (N, W): a fresh database with N open orders (bulk-inserted, ledger consistent), two
``paxyo simulator`` processes holding the same orders (10% of them already Canceled or
Partial), a ``paxyo dispatcher`` and W ``paxyo worker`` processes. Once every process is up
and idle, all orders are made due at once; the clock runs until every order has been checked
once. Prints a table; asserts nothing on time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import psutil
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paxyo.cli.private_redis import PrivateRedis, answers  # noqa: E402
from paxyo.clock import utcnow  # noqa: E402
from paxyo.store.engine import open_engine  # noqa: E402
from paxyo.store.migrate import upgrade  # noqa: E402
from paxyo.store.schema import accounts, ledger_entries, metadata, orders  # noqa: E402

PROVIDERS = ("alpha", "beta")
KEY = "bench-key"
USERS = 1000
CHARGE = Decimal("1.00")
CHANGE_RATE = 0.10
BATCH = 5000


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, body: object) -> object:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return orjson.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return orjson.loads(response.read())


# -- setup --------------------------------------------------------------------------------


def fresh_database(url: str | None, workdir: Path) -> str:
    if url is None:
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        engine.dispose()
    upgrade(url)
    return url


def provider_of(oid: int) -> str:
    return PROVIDERS[oid % len(PROVIDERS)]


def final_state(oid: int, rate: float = CHANGE_RATE) -> tuple[str, int] | None:
    """About ``rate`` of orders end (half Canceled, half Partial); the rest stay In progress."""
    bucket = (oid * 7919) % 1000
    if bucket < rate * 500:
        return "Canceled", 1000
    if bucket < rate * 1000:
        return "Partial", 1 + oid % 999
    return None


@contextlib.contextmanager
def bench_redis(url: str) -> Iterator[str]:
    """``url`` when a Redis answers there, else a private one on a free port for the run."""
    if answers(url):
        yield url
        return
    private = PrivateRedis(free_port())
    try:
        yield private.start()
    finally:
        private.stop()


def seed_database(url: str, count: int) -> None:
    """Accounts, a deposit and a charge per order (balance == ledger), N open orders."""
    engine = open_engine(url)
    now = utcnow()
    per_user: dict[int, int] = {}
    for oid in range(1, count + 1):
        per_user[oid % USERS] = per_user.get(oid % USERS, 0) + 1
    deposit = {u: CHARGE * n + Decimal("100.00") for u, n in per_user.items()}
    with engine.begin() as conn:
        conn.execute(sa.insert(accounts), [
            {"user_id": u, "balance": deposit[u] - CHARGE * per_user[u], "created_at": now,
             "updated_at": now} for u in per_user])
        conn.execute(sa.insert(ledger_entries), [
            {"user_id": u, "kind": "deposit", "amount": deposit[u],
             "idempotency_key": f"deposit:{u}:bench", "order_id": None, "reference": "bench",
             "created_at": now} for u in per_user])
    far = now + timedelta(days=1)  # not due until the run starts
    unchanged_since = now - timedelta(hours=1)
    for start in range(1, count + 1, BATCH):
        ids = range(start, min(count, start + BATCH - 1) + 1)
        with engine.begin() as conn:
            conn.execute(sa.insert(orders), [
                {"id": oid, "user_id": oid % USERS, "provider": provider_of(oid),
                 "provider_order_id": str(oid), "service": "1", "link": None,
                 "quantity": 1000, "charge": CHARGE, "refunded": Decimal(0),
                 "status": "In progress", "status_class": "open", "remains": 1000,
                 "review_status": None, "request_hash": "bench", "created_at": unchanged_since,
                 "updated_at": unchanged_since, "observed_at": None,
                 "changed_at": unchanged_since, "next_check_at": far, "lease_until": None,
                 "lease_token": None} for oid in ids])
            conn.execute(sa.insert(ledger_entries), [
                {"user_id": oid % USERS, "kind": "charge", "amount": -CHARGE,
                 "idempotency_key": f"charge:{oid}", "order_id": oid, "reference": None,
                 "created_at": now} for oid in ids])
    engine.dispose()


def seed_simulators(sims: dict[str, str], count: int) -> None:
    for name, base in sims.items():
        batch: list[dict] = []
        for oid in range(1, count + 1):
            if provider_of(oid) != name:
                continue
            status, remains = final_state(oid) or ("In progress", 1000)
            batch.append({"id": str(oid), "status": status, "remains": remains})
            if len(batch) >= 10_000:
                post_json(f"{base}/sim/orders", {"orders": batch})
                batch = []
        if batch:
            post_json(f"{base}/sim/orders", {"orders": batch})


# -- processes ----------------------------------------------------------------------------


class Processes:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "paxyo.cli", *args], cwd=ROOT,
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def cpu_seconds(self, prefix: str) -> float:
        total = 0.0
        for name, proc in self.procs.items():
            if name.startswith(prefix) and proc.poll() is None:
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(what: str, done, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- one run ------------------------------------------------------------------------------


def run_once(count: int, workers: int, latency_ms: int, database_url: str | None,
             redis_url: str, poll_interval: int, shards_per_job: int = 4) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="paxyo-bench-"))
    url = fresh_database(database_url, workdir)
    seed_database(url, count)
    prefix = f"paxyobench:{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in PROVIDERS}
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url,
           "PAXYO_REDIS_PREFIX": prefix, "PAXYO_QUEUE": f"{prefix}-q",
           "PAXYO_POLL_INTERVAL": str(poll_interval), "PAXYO_PROVIDER_RATE_LIMIT": "100000",
           "PAXYO_SHARDS_PER_JOB": str(shards_per_job),
           "PAXYO_LOG_FORMAT": "text"}
    env.update(provider_env(ports))
    procs = Processes(workdir, env)
    engine = open_engine(url)
    try:
        sims = start_simulators(procs, ports)
        seed_simulators(sims, count)
        for base in sims.values():
            post_json(f"{base}/sim/faults", {"latency_ms": latency_ms})
            post_json(f"{base}/sim/stats/reset", {})
        for i in range(workers):
            procs.start(f"worker-{i}", "worker")
        procs.start("dispatcher-0", "dispatcher")
        time.sleep(4)  # imports done, pools warm, leader elected, queues idle
        dispatcher_before = procs.cpu_seconds("dispatcher")
        cpu_before = procs.cpu_seconds("worker") + dispatcher_before
        started_at = utcnow()
        with engine.begin() as conn:
            conn.execute(sa.update(orders).values(next_check_at=started_at))
        t0 = time.monotonic()
        checked = sa.select(sa.func.count()).select_from(orders).where(
            orders.c.observed_at >= started_at)
        while True:
            with engine.connect() as conn:
                done = conn.execute(checked).scalar_one()
            if done >= count:
                break
            if time.monotonic() - t0 > 1800:
                raise SystemExit(f"only {done} of {count} orders checked after 30 min")
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        dispatcher_cpu = procs.cpu_seconds("dispatcher") - dispatcher_before
        cpu = procs.cpu_seconds("worker") + dispatcher_cpu + dispatcher_before - cpu_before
        calls = {name: get_json(f"{base}/sim/stats")["status_requests"]
                 for name, base in sims.items()}
        with engine.connect() as conn:
            changed = conn.execute(sa.select(sa.func.count()).select_from(orders).where(
                orders.c.status_class != "open")).scalar_one()
            per_provider = dict(conn.execute(sa.select(orders.c.provider, sa.func.count())
                                             .group_by(orders.c.provider)).all())
        minimum = sum(math.ceil(per_provider[p] / 100) for p in PROVIDERS)
        return {"orders": count, "workers": workers, "per_job": shards_per_job,
                "calls": sum(calls.values()),
                "min_calls": minimum, "seconds": elapsed, "checked_per_s": count / elapsed,
                "changes": changed, "changes_per_s": changed / elapsed,
                "cpu_per_1000": cpu / count * 1000,
                "dispatcher_cpu_per_1000": dispatcher_cpu / count * 1000}
    finally:
        procs.stop()
        engine.dispose()
        _drop_redis_keys(redis_url, prefix)


def provider_env(ports: dict[str, int]) -> dict[str, str]:
    """PAXYO_PROVIDER_<NAME>_URL and _KEY for a simulator per provider on these ports."""
    env = {}
    for name, port in ports.items():
        env[f"PAXYO_PROVIDER_{name.upper()}_URL"] = f"http://127.0.0.1:{port}/api/v2"
        env[f"PAXYO_PROVIDER_{name.upper()}_KEY"] = KEY
    return env


def start_simulators(procs: Processes, ports: dict[str, int]) -> dict[str, str]:
    """A simulator per provider, each answering once this returns; their base URLs."""
    sims = {}
    for name, port in ports.items():
        procs.start(f"sim-{name}", "simulator", "--port", str(port), "--key", KEY)
        sims[name] = f"http://127.0.0.1:{port}"
    for base in sims.values():
        wait_for("the simulator", lambda b=base: _answers_http(f"{b}/sim/stats"), 20)
    return sims


def _answers_http(url: str) -> bool:
    try:
        get_json(url)
        return True
    except OSError:
        return False


def _drop_redis_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{prefix}:*", f"rq:*{prefix}-q*"):
        keys = list(client.scan_iter(match=pattern, count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    client.close()


# -- report -------------------------------------------------------------------------------

COLUMNS = (
    ("orders", "N", "{:>7}"), ("workers", "W", "{:>2}"), ("per_job", "shards/job", "{:>2}"),
    ("calls", "status calls", "{:>12}"), ("min_calls", "sum of ceil(N_p/100)", "{:>20}"),
    ("orders", "per-order polling", "{:>17}"), ("seconds", "time to check all s", "{:>19.1f}"),
    ("checked_per_s", "checked/s", "{:>9.0f}"), ("changes_per_s", "changes/s", "{:>9.0f}"),
    ("cpu_per_1000", "CPU s/1000 orders", "{:>17.3f}"),
    ("dispatcher_cpu_per_1000", "of which dispatcher", "{:>19.3f}"),
)


def print_table(rows: list[dict[str, float]]) -> None:
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in rows:
        print("| " + " | ".join(fmt.format(row[key]).strip() for key, _, fmt in COLUMNS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", default="10000,100000")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--poll-interval", type=int, default=30)
    parser.add_argument("--shards-per-job", default="4",
                        help="comma-separated PAXYO_SHARDS_PER_JOB values; 1 is the design "
                             "before several shards per job (one call in flight per worker)")
    parser.add_argument("--database-url", help="default: a fresh SQLite file per run; a given "
                        "database is emptied (tables dropped) before each run")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    rows = []
    with bench_redis(args.redis_url) as redis_url:
        for count in (int(n) for n in args.orders.split(",")):
            for workers in (int(w) for w in args.workers.split(",")):
                for per_job in (int(k) for k in args.shards_per_job.split(",")):
                    row = run_once(count, workers, args.latency_ms, args.database_url,
                                   redis_url, args.poll_interval, per_job)
                    rows.append(row)
                    print(f"N={count} W={workers} shards/job={per_job}: "
                          f"{row['seconds']:.1f}s, {row['calls']} calls, "
                          f"{row['cpu_per_1000']:.3f} CPU s/1000", flush=True)
    print()
    print(f"simulator latency {args.latency_ms} ms, 2 providers, "
          f"{os.cpu_count()} CPUs, database {args.database_url or 'SQLite'}")
    print_table(rows)


if __name__ == "__main__":
    main()
