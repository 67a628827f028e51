"""Scale benchmark: N open orders on PostgreSQL, checked in steady state, one poll interval.

    python bench/scale.py [--orders 1000000] [--workers 4] [--poll-interval 300]
                          [--duration SECONDS] [--change-rate 0.10] [--latency-ms 200]
                          [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                          [--redis-url URL] [--keep]

A fresh database ``paxyo_scale_<random>`` is created next to the one ``--database-url`` names
(an admin URL; nothing in that database is touched), migrated, and seeded in SQL
(``INSERT ... SELECT FROM generate_series``): one account per user, a deposit per user and a
charge per order in the ledger (every balance equals the sum of its entries), N open orders,
then ``ANALYZE``. Two ``paxyo simulator`` providers hold the same orders (``--change-rate``
of them, 10% by default with pipeline.py's ``final_state`` hash, already Canceled or Partial;
the rest In progress) and answer after ``--latency-ms``. One ``paxyo dispatcher`` and W
``paxyo worker`` processes run with ``PAXYO_POLL_INTERVAL``.

Steady state, not a burst: when the processes are up and idle, each order's ``next_check_at``
is set to ``start + u * interval`` with ``u`` uniform in [0, 1) (a hash of the order id), so
N / interval orders fall due per second, as if each had last been checked one interval
earlier. The run lasts ``--duration`` seconds (default one interval + 60 s).

"Checked in time": an order's first check during the run (captured from ``observed_at``
every 15 s into a temp table) is at most ``dispatch_allowance`` (2 s) after its due time, i.e.
at most one interval after its implied previous check (due time - (interval - 2 s), which is
how paxyo.schedule spaces the checks of an unchanged order). The lag (first check - due time)
is printed as p50/p99/max; negative means checked early (a part-full shard topped up).

Prints progress every 15 s and, at the end: seeding time, orders checked in time, lag, status
calls per provider in the first interval and per interval over the run against
``ceil(N_provider / 100)``, CPU per 1,000 orders checked (workers + dispatcher, PostgreSQL
backends of this database, the rest of PostgreSQL, simulators; psutil), the machine's busy
cores, ``pg_database_size`` and the tables' sizes, and the dispatcher's planning time per
tick (``paxyo_dispatcher_plan_seconds``, scraped from its metrics port every 3 s: mean,
bucket p50/p99, max over 3 s windows). Asserts nothing on time. The database is dropped at
the end unless ``--keep`` (which also keeps the processes' logs).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import (  # noqa: E402
    PROVIDERS,
    Processes,
    _drop_redis_keys,
    bench_redis,
    final_state,
    free_port,
    get_json,
    post_json,
    provider_env,
    start_simulators,
    wait_for,
)

from dispatcher.loop import MIN_QUEUED  # noqa: E402
from dispatcher.planner import by_provider, due_orders, top_up  # noqa: E402
from paxyo.clock import utcnow  # noqa: E402
from paxyo.leases import lease_free  # noqa: E402
from paxyo.schedule import dispatch_allowance  # noqa: E402
from paxyo.shard_policy import SHARD_SIZE  # noqa: E402
from paxyo.store.engine import open_engine  # noqa: E402
from paxyo.store.migrate import upgrade  # noqa: E402
from paxyo.store.schema import orders  # noqa: E402
from paxyo.store.server_settings import server_warnings  # noqa: E402

PROGRESS_EVERY = 15.0
PROBE_EVERY = 4  # progress lines between two timings of the planner's read queries
SCRAPE_EVERY = 3.0
CAPTURE_OVERLAP = timedelta(seconds=60)  # observed_at is set before its transaction commits
SIM_BATCH = 10_000
# what one tick with an empty queue plans: MIN_QUEUED jobs of 4 shards of 100 orders
PLANNED_AT_MOST = MIN_QUEUED * 4 * SHARD_SIZE

# u in [0, 1) from the order id: the order's place in the interval (same SQL when seeding
# the due times and when reading the lags back).
FRACTION = "((hashint8(o.id)::float8 + 2147483648.0) / 4294967296.0)"


def provider_sql() -> str:
    """pipeline.provider_of in SQL: PROVIDERS[id % len(PROVIDERS)]."""
    whens = " ".join(f"WHEN {i} THEN '{p}'" for i, p in enumerate(PROVIDERS))
    return f"CASE g % {len(PROVIDERS)} {whens} END"


# -- database -----------------------------------------------------------------------------


def create_database(admin_url: str) -> tuple[str, str]:
    name = f"paxyo_scale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def drop_database(admin_url: str, name: str) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def seed_database(engine: sa.Engine, count: int, users: int) -> dict[str, float]:
    """Accounts, ledger and N open orders in four statements; returns seconds per step.

    Each user gets a deposit of (their orders x 1.00) + 100.00 and a charge of -1.00 per
    order, so every balance is 100.00 and equals the sum of its ledger entries. Orders are
    not due (next_check_at a day ahead) until :func:`spread_due_times`.
    """
    now = utcnow()
    params = {"now": now, "far": now + timedelta(days=1),
              "since": now - timedelta(hours=1), "n": count, "users": users,
              "suffix": ":bench"}
    steps = {
        "accounts": """
            INSERT INTO accounts (user_id, balance, created_at, updated_at)
            SELECT u, 100.00, :now, :now FROM generate_series(0, :users - 1) AS u""",
        "orders": f"""
            INSERT INTO orders (id, user_id, provider, provider_order_id, service, link,
                quantity, charge, refunded, status, status_class, remains, review_status,
                request_hash, created_at, updated_at, observed_at, changed_at, next_check_at,
                lease_until, lease_token)
            SELECT g, g % :users, {provider_sql()}, g::text, '1', NULL, 1000, 1.00, 0,
                'In progress', 'open', 1000, NULL, 'bench', :since, :since, NULL, :since,
                :far, NULL, NULL
            FROM generate_series(1, :n) AS g""",
        "charges": """
            INSERT INTO ledger_entries (user_id, kind, amount, idempotency_key, order_id,
                reference, created_at)
            SELECT g % :users, 'charge', -1.00, 'charge:' || g, g, NULL, :now
            FROM generate_series(1, :n) AS g""",
        "deposits": """
            INSERT INTO ledger_entries (user_id, kind, amount, idempotency_key, order_id,
                reference, created_at)
            SELECT a.user_id, 'deposit', 100.00 + coalesce(c.n, 0) * 1.00,
                'deposit:' || a.user_id || :suffix, NULL, 'bench', :now
            FROM accounts a LEFT JOIN (SELECT user_id, count(*) AS n FROM orders
                                       GROUP BY user_id) c ON c.user_id = a.user_id""",
    }
    seconds: dict[str, float] = {}
    for step, sql in steps.items():
        t0 = time.monotonic()
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
        seconds[step] = time.monotonic() - t0
    t0 = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    seconds["vacuum analyze"] = time.monotonic() - t0
    with engine.connect() as conn:
        bad = conn.execute(sa.text("""
            SELECT count(*) FROM accounts a JOIN (SELECT user_id, sum(amount) AS s
            FROM ledger_entries GROUP BY user_id) l USING (user_id)
            WHERE a.balance <> l.s""")).scalar_one()
    if bad:
        raise SystemExit(f"seeding is inconsistent: {bad} balances differ from their ledger")
    return seconds


def spread_due_times(engine: sa.Engine, start: datetime, interval: float) -> float:
    """Due times uniform over [start, start + interval); then VACUUM ANALYZE. Seconds taken."""
    t0 = time.monotonic()
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            UPDATE orders o SET next_check_at = :start
                + make_interval(secs => {FRACTION} * :interval)"""),
                     {"start": start, "interval": interval})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE orders")
    return time.monotonic() - t0


class FirstChecks:
    """Each order's first ``observed_at`` of the run, kept in a temp table on one connection
    (``observed_at`` is overwritten by the order's next check one interval later)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.conn.exec_driver_sql(
            "CREATE TEMP TABLE first_check (id bigint PRIMARY KEY, observed_at timestamp)")
        self.since: datetime | None = None
        # wall seconds of the bench's own queries on this database (captures, backlog, planner
        # probes): an upper bound on the PostgreSQL CPU that is the bench's, not paxyo's
        self.seconds = 0.0
        self.inserted = 0  # rows, counted in pg_stat_database's tup_inserted

    def capture(self) -> int:
        t0 = time.monotonic()
        moment = utcnow()
        where = "observed_at IS NOT NULL" if self.since is None else "observed_at > :since"
        self.inserted += self.conn.execute(sa.text(f"""
            INSERT INTO first_check SELECT id, observed_at FROM orders WHERE {where}
            ON CONFLICT (id) DO NOTHING"""), {"since": self.since}).rowcount
        self.since = moment - CAPTURE_OVERLAP
        done = self.conn.exec_driver_sql("SELECT count(*) FROM first_check").scalar_one()
        self.seconds += time.monotonic() - t0
        return int(done)

    def lags(self, start: datetime, interval: float, allowance: float) -> dict[str, float]:
        row = self.conn.execute(sa.text(f"""
            WITH lag AS (
                SELECT extract(epoch FROM f.observed_at - (:start
                    + make_interval(secs => {FRACTION} * :interval)))::float8 AS s
                FROM orders o JOIN first_check f ON f.id = o.id)
            SELECT count(*), count(*) FILTER (WHERE s <= :allowance),
                count(*) FILTER (WHERE s <= :interval), min(s),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY s),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s) FROM lag"""),
            {"start": start, "interval": interval, "allowance": allowance}).one()
        keys = ("checked", "in_time", "within_interval", "min", "p50", "p99", "max")
        return {k: (float(v) if v is not None else math.nan) for k, v in zip(keys, row,
                                                                                strict=True)}

    def close(self) -> None:
        self.conn.close()


def backlog(engine: sa.Engine) -> tuple[int, float]:
    """Due, unleased open orders and the dispatcher lag (most overdue of them), now."""
    now = utcnow()
    with engine.connect() as conn:
        due, oldest = conn.execute(sa.text("""
            SELECT count(*), min(next_check_at) FROM orders
            WHERE status_class = 'open' AND next_check_at <= :now
              AND (lease_until IS NULL OR lease_until < :now)"""), {"now": now}).one()
    return int(due), max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def explain_planner(engine: sa.Engine, interval: float) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the planner's due query (the LIMIT of a tick with an empty
    queue) and of one provider's top-up (the last shard's spare room), as they run now;
    read-only."""
    now = utcnow()
    due = sa.select(orders.c.provider, orders.c.id).where(
        orders.c.status_class == "open", orders.c.next_check_at <= now, lease_free(now)
    ).order_by(orders.c.next_check_at).limit(PLANNED_AT_MOST)
    with engine.connect() as conn:
        provider_due = sum(1 for r in conn.execute(due) if r.provider == PROVIDERS[0])
    ahead = sa.select(orders.c.id).where(
        orders.c.provider == PROVIDERS[0], orders.c.status_class == "open",
        orders.c.next_check_at > now,
        orders.c.next_check_at <= now + timedelta(seconds=interval / 2), lease_free(now)
    ).order_by(orders.c.next_check_at).limit(max(1, -provider_due % SHARD_SIZE))
    with engine.connect() as conn:
        for label, query in (("due", due), (f"{PROVIDERS[0]} top-up", ahead)):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").scalars().all()
            print(f"\nEXPLAIN (ANALYZE, BUFFERS) of the planner's {label} query at the end:")
            print("\n".join(f"    {line}" for line in plan))


def sizes(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT pg_database_size(current_database()),
                   pg_total_relation_size('orders'), pg_relation_size('orders'),
                   pg_indexes_size('orders'), pg_total_relation_size('ledger_entries'),
                   pg_total_relation_size('outbox'), pg_total_relation_size('accounts')""")).one()
        dead = conn.execute(sa.text("""
            SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count
            FROM pg_stat_user_tables WHERE relname = 'orders'""")).one()
    keys = ("database", "orders", "orders_heap", "orders_indexes", "ledger", "outbox",
            "accounts")
    return {**dict(zip(keys, (int(v) for v in row), strict=True)),
            "orders_live": int(dead[0]), "orders_dead": int(dead[1]),
            "autovacuums": int(dead[2]), "autoanalyzes": int(dead[3])}


# -- simulators ---------------------------------------------------------------------------


def seed_simulators(sims: dict[str, str], count: int, rate: float) -> None:
    for index, base in enumerate(sims.values()):  # PROVIDERS[oid % 2]: alpha even, beta odd
        batch: list[dict] = []
        for oid in range(index or len(PROVIDERS), count + 1, len(PROVIDERS)):
            status, remains = final_state(oid, rate) or ("In progress", 1000)
            batch.append({"id": str(oid), "status": status, "remains": remains})
            if len(batch) >= SIM_BATCH:
                post_json(f"{base}/sim/orders", {"orders": batch})
                batch = []
        if batch:
            post_json(f"{base}/sim/orders", {"orders": batch})


# -- CPU ----------------------------------------------------------------------------------


class PostgresCpu:
    """CPU seconds of the PostgreSQL server's processes since :meth:`start`, split into this
    database's backends (its name is in their title, autovacuum workers' too) and the rest
    (checkpointer, WAL writer, other databases' backends: the machine is shared)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: dict[int, tuple[str, float]] = {}
        self.totals = {"ours": 0.0, "rest": 0.0}
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.time()
        self.totals = {"ours": 0.0, "rest": 0.0}
        self.seen = {}
        self.sample(count_new=False)

    def sample(self, count_new: bool = True) -> dict[str, float]:
        for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
            if proc.info["name"] not in ("postgres", "postmaster"):
                continue
            try:
                cpu = proc.cpu_times()
            except psutil.Error:
                continue
            used = cpu.user + cpu.system
            kind = "ours" if self.database in " ".join(proc.info["cmdline"] or ()) else "rest"
            if proc.pid in self.seen:
                self.totals[kind] += used - self.seen[proc.pid][1]
            elif count_new and (proc.info["create_time"] or 0) >= self.t0:
                self.totals[kind] += used  # a backend that started during the run
            self.seen[proc.pid] = (kind, used)
        return dict(self.totals)


def machine_busy() -> float:
    times = psutil.cpu_times()
    return times.user + times.system + times.nice + getattr(times, "irq", 0) + \
        getattr(times, "softirq", 0)


# -- dispatcher metrics -------------------------------------------------------------------


@dataclass
class PlanStats:
    """``paxyo_dispatcher_plan_seconds`` and the shards enqueued, scraped over the run."""

    url: str
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    window_max: float = 0.0  # the highest mean over one scrape window (~3 s, ~3 ticks)

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("paxyo_dispatcher_plan_seconds"):
                    le = sample.labels.get("le")
                    values[sample.name + (f"@{le}" if le else "")] = sample.value
                elif sample.name == "paxyo_dispatcher_shards_enqueued_total":
                    values["shards"] = sample.value
        return values

    def update(self) -> None:
        try:
            now = self.scrape()
        except OSError:
            return
        if not self.first:
            self.first = now
        elif self.last:
            ticks = now["paxyo_dispatcher_plan_seconds_count"] - \
                self.last["paxyo_dispatcher_plan_seconds_count"]
            spent = now["paxyo_dispatcher_plan_seconds_sum"] - \
                self.last["paxyo_dispatcher_plan_seconds_sum"]
            if ticks > 0:
                self.window_max = max(self.window_max, spent / ticks)
        self.last = now

    def delta(self, key: str, since: dict[str, float] | None = None) -> float:
        base = since if since is not None else self.first
        return self.last.get(key, 0.0) - base.get(key, 0.0)

    def summary(self, since: dict[str, float] | None = None) -> dict[str, float]:
        ticks = self.delta("paxyo_dispatcher_plan_seconds_count", since)
        spent = self.delta("paxyo_dispatcher_plan_seconds_sum", since)
        buckets = sorted((float(k.split("@")[1]), self.delta(k, since)) for k in self.last
                         if k.startswith("paxyo_dispatcher_plan_seconds_bucket@"))

        def quantile(q: float) -> float:
            for le, cumulative in buckets:
                if ticks and cumulative >= q * ticks:
                    return le
            return math.inf

        return {"ticks": ticks, "mean": spent / ticks if ticks else math.nan,
                "p50": quantile(0.5), "p99": quantile(0.99), "max": self.window_max,
                "shards": self.delta("shards", since)}


# -- run ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    calls: dict[str, int]
    queried: int
    worker_cpu: float
    dispatcher_cpu: float
    sim_cpu: float
    pg: dict[str, float]
    busy: float
    db: dict[str, float]

    @property
    def paxyo_cpu(self) -> float:
        return self.worker_cpu + self.dispatcher_cpu


def snapshot(procs: Processes, sims: dict[str, str], pg: PostgresCpu,
             engine: sa.Engine) -> Snapshot:
    stats = {name: get_json(f"{base}/sim/stats") for name, base in sims.items()}
    return Snapshot(time.monotonic(), {n: int(s["status_requests"]) for n, s in stats.items()},
                    sum(int(s["orders_queried"]) for s in stats.values()),
                    procs.cpu_seconds("worker"), procs.cpu_seconds("dispatcher"),
                    procs.cpu_seconds("sim"), pg.sample(), machine_busy(), db_counters(engine))


def db_counters(engine: sa.Engine) -> dict[str, float]:
    """This database's transactions and rows (pg_stat_database), and the server's WAL position
    (all databases: the server is shared)."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT xact_commit, xact_rollback, tup_fetched, tup_inserted, tup_updated,
                   tup_deleted, blks_read, blks_hit,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')
            FROM pg_stat_database WHERE datname = current_database()""")).one()
    keys = ("commits", "rollbacks", "fetched", "inserted", "updated", "deleted", "blks_read",
            "blks_hit", "wal")
    return {k: float(v) for k, v in zip(keys, row, strict=True)}


def planner_reads(engine: sa.Engine, interval: float) -> tuple[float, float]:
    """Seconds for the planner's read queries of one tick, run here read-only: the due orders
    (as many as a tick with an empty queue plans), and each provider's top-up. Planning minus
    these is mostly leasing."""
    now = utcnow()
    t0 = time.monotonic()
    due = due_orders(engine, now, PLANNED_AT_MOST)
    t1 = time.monotonic()
    for provider, ids in by_provider(due).items():
        top_up(engine, provider, now, interval / 2, -len(ids) % SHARD_SIZE, set(ids))
    return t1 - t0, time.monotonic() - t1


PROGRESS_HEADER = (f"{'t s':>5} {'first-checked':>13} {'calls':>7} {'due now':>8} "
                   f"{'lag s':>6} {'queued jobs':>11} {'plan ms':>8} {'read ms':>7} "
                   f"{'paxyo cores':>11} {'pg cores':>8} {'busy cores':>10}")


def progress_line(base: Snapshot, last: Snapshot, snap: Snapshot, done: float, due: int,
                  lag: float, queued: int, planning: float, reads: float) -> str:
    """One progress row: cumulative first checks and calls; the rest over the last window."""
    window = max(1e-9, snap.at - last.at)
    pg_cores = (sum(snap.pg.values()) - sum(last.pg.values())) / window
    return (f"{snap.at - base.at:5.0f} {done:13.1%} "
            f"{sum(snap.calls.values()) - sum(base.calls.values()):>7} {due:>8,} {lag:6.1f} "
            f"{queued:>11} {planning * 1000:8.1f} {reads * 1000:7.1f} "
            f"{(snap.paxyo_cpu - last.paxyo_cpu) / window:11.2f} {pg_cores:8.2f} "
            f"{(snap.busy - last.busy) / window:10.2f}")


SETTINGS_SHOWN = ("autovacuum", "shared_buffers", "max_wal_size", "synchronous_commit")


def server_settings(engine: sa.Engine) -> str:
    """The server settings the figures depend on (autovacuum is off on some test machines)."""
    with engine.connect() as conn:
        values = [f"{name}={conn.exec_driver_sql(f'SHOW {name}').scalar()}"
                  for name in SETTINGS_SHOWN]
    return ", ".join(values)


def run(args: argparse.Namespace, redis_url: str) -> None:
    count, interval = args.orders, float(args.poll_interval)
    duration = args.duration if args.duration is not None else interval + 60
    users = max(1000, count // 100)
    workdir = Path(tempfile.mkdtemp(prefix="paxyo-scale-"))
    name, url = create_database(args.database_url)
    print(f"database {name}; logs in {workdir}; {os.cpu_count()} CPUs (machine shared)",
          flush=True)
    engine = open_engine(url)
    print(f"PostgreSQL settings: {server_settings(engine)}", flush=True)
    for warning in server_warnings(engine):  # what paxyo status would say of this server
        print(f"  {warning}", flush=True)
    prefix = f"paxyoscale:{uuid.uuid4().hex[:8]}"
    procs: Processes | None = None
    first: FirstChecks | None = None
    try:
        t0 = time.monotonic()
        upgrade(url)
        migrate_s = time.monotonic() - t0
        seeded = seed_database(engine, count, users)
        print(f"migrated in {migrate_s:.1f}s; seeded {count:,} orders, {users:,} users in "
              f"{sum(seeded.values()):.1f}s (" +
              ", ".join(f"{k} {v:.1f}s" for k, v in seeded.items()) + ")", flush=True)
        seeded_sizes = sizes(engine)

        ports = {p: free_port() for p in PROVIDERS}
        metrics_port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url,
               "PAXYO_REDIS_PREFIX": prefix, "PAXYO_QUEUE": f"{prefix}-q",
               "PAXYO_POLL_INTERVAL": str(args.poll_interval),
               "PAXYO_PROVIDER_RATE_LIMIT": "1000000", "PAXYO_LOG_FORMAT": "text"}
        env.update(provider_env(ports))
        procs = Processes(workdir, env)
        sims = start_simulators(procs, ports)
        t0 = time.monotonic()
        seed_simulators(sims, count, args.change_rate)
        print(f"simulators seeded in {time.monotonic() - t0:.1f}s "
              f"({args.change_rate:.0%} of orders changed there)", flush=True)
        for base in sims.values():
            post_json(f"{base}/sim/faults", {"latency_ms": args.latency_ms})
        for i in range(args.workers):
            procs.start(f"worker-{i}", "worker")
        procs.env = {**env, "PAXYO_METRICS_PORT": str(metrics_port)}
        procs.start("dispatcher-0", "dispatcher")
        plan = PlanStats(f"http://127.0.0.1:{metrics_port}/metrics")
        wait_for("the dispatcher's metrics", lambda: bool(plan.update() or plan.last), 30)
        time.sleep(3)  # imports done, pools warm, leader elected, queues idle

        # due times spread over [start, start + interval); start leaves room for the UPDATE
        margin = 10 + 50 * count / 1_000_000
        start = utcnow() + timedelta(seconds=margin)
        spread_s = spread_due_times(engine, start, interval)
        late = (utcnow() - start).total_seconds()
        print(f"due times spread over {interval:.0f}s in {spread_s:.1f}s (UPDATE + VACUUM "
              f"ANALYZE orders)" + (f"; {late:.1f}s after start: the first orders start "
                                    "late" if late > 0 else ""), flush=True)
        if late < 0:
            time.sleep(-late)
        first = FirstChecks(engine)
        pg = PostgresCpu(name)
        pg.start()
        plan.update()
        plan_start = dict(plan.last)
        base = snapshot(procs, sims, pg, engine)
        at_interval: Snapshot | None = None
        plan_interval: dict[str, float] | None = None
        end = base.at + duration
        next_progress = base.at + PROGRESS_EVERY
        last = base
        reads: list[tuple[float, float]] = []
        lines = 0
        queue, queue_key = redis.Redis.from_url(redis_url), f"rq:queue:{prefix}-q"
        print(PROGRESS_HEADER, flush=True)
        plan_last = dict(plan.last)
        while time.monotonic() < end:
            time.sleep(min(SCRAPE_EVERY, max(0.0, end - time.monotonic())))
            plan.update()
            now = time.monotonic()
            if at_interval is None and now - base.at >= interval:
                at_interval = snapshot(procs, sims, pg, engine)
                plan_interval = dict(plan.last)
            if now >= next_progress or now >= end:
                next_progress += PROGRESS_EVERY
                done = first.capture()
                snap = snapshot(procs, sims, pg, engine)
                t0 = time.monotonic()
                due, lag = backlog(engine)
                if len(reads) < lines // PROBE_EVERY + 1:
                    reads.append(planner_reads(engine, interval))
                first.seconds += time.monotonic() - t0
                lines += 1
                planning = plan.summary(plan_last)["mean"]
                print(progress_line(base, last, snap, done / count, due, lag,
                                    queue.llen(queue_key), planning, sum(reads[-1])), flush=True)
                last, plan_last = snap, dict(plan.last)
        final = snapshot(procs, sims, pg, engine)
        first.capture()
        explain_planner(engine, interval)
        report(args, count, users, interval, start, base, at_interval, final, first, plan,
               plan_start, plan_interval, seeded, seeded_sizes, sizes(engine), engine, reads)
    finally:
        if first is not None:
            first.close()
        if procs is not None:
            procs.stop()
        engine.dispose()
        _drop_redis_keys(redis_url, prefix)
        if args.keep:
            print(f"kept database {name} and logs in {workdir}")
        else:
            drop_database(args.database_url, name)
            shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, count: int, users: int, interval: float,
           start: datetime, base: Snapshot, at_interval: Snapshot | None, final: Snapshot,
           first: FirstChecks, plan: PlanStats, plan_start: dict[str, float],
           plan_interval: dict[str, float] | None, seeded: dict[str, float],
           seeded_sizes: dict[str, int], end_sizes: dict[str, int],
           engine: sa.Engine, reads: list[tuple[float, float]]) -> None:
    allowance = dispatch_allowance(interval)
    lags = first.lags(start, interval, allowance)
    with engine.connect() as conn:
        per_provider = dict(conn.execute(sa.text(
            "SELECT provider, count(*) FROM orders GROUP BY provider")).all())
        changed = conn.execute(sa.text(
            "SELECT count(*) FROM orders WHERE status_class <> 'open'")).scalar_one()
    elapsed = final.at - base.at
    queried = final.queried - base.queried
    mb = 1024 * 1024
    print()
    print(f"N={count:,} open orders ({users:,} users), W={args.workers} workers, "
          f"PAXYO_POLL_INTERVAL={interval:g}, simulator latency {args.latency_ms} ms, "
          f"{args.change_rate:.0%} of orders changed at the providers; PostgreSQL; "
          f"{os.cpu_count()} CPUs shared with other sessions; run {elapsed:.0f}s")
    print(f"seeding: {sum(seeded.values()):.1f}s")
    print()
    print("| checked in time (first check ≤ due + "
          f"{allowance:g}s) | within due + interval | never checked | lag p50 s | "
          "lag p99 s | lag max s | lag min s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {int(lags['in_time']):,} of {count:,} ({lags['in_time'] / count:.2%}) | "
          f"{int(lags['within_interval']):,} | {count - int(lags['checked']):,} | "
          f"{lags['p50']:.1f} | {lags['p99']:.1f} | {lags['max']:.1f} | {lags['min']:.1f} |")
    print()
    print("| provider | open orders | ceil(N_p/100) | calls in first interval | "
          f"calls per {interval:g}s over the run | ids per call |")
    print("|---|---|---|---|---|---|")
    all_calls = max(1, sum(final.calls.values()) - sum(base.calls.values()))
    for p in PROVIDERS:
        n_p = per_provider.get(p, 0)
        first_calls = (at_interval.calls[p] - base.calls[p]) if at_interval else "-"
        calls = final.calls[p] - base.calls[p]
        print(f"| {p} | {n_p:,} | {math.ceil(n_p / 100):,} | {first_calls} | "
              f"{calls / elapsed * interval:,.0f} | {queried / all_calls:.1f} |")
    print(f"orders checked (ids asked) {queried:,} in {elapsed:.0f}s = {queried / elapsed:,.0f}/s"
          f"; {changed:,} orders changed (refund + event) during the run")
    print()
    per_k = 1000 / max(1, queried)
    pg_ours = final.pg["ours"] - base.pg["ours"]
    pg_rest = final.pg["rest"] - base.pg["rest"]
    ours = (final.paxyo_cpu - base.paxyo_cpu) + pg_ours + pg_rest + (final.sim_cpu - base.sim_cpu)
    rows = (("workers", final.worker_cpu - base.worker_cpu),
            ("dispatcher", final.dispatcher_cpu - base.dispatcher_cpu),
            ("workers + dispatcher", final.paxyo_cpu - base.paxyo_cpu),
            ("PostgreSQL: this database's backends", pg_ours),
            ("  of which the bench's own queries (wall s, upper bound)", first.seconds),
            ("PostgreSQL: other processes (shared)", pg_rest),
            ("simulators", final.sim_cpu - base.sim_cpu),
            ("whole machine", final.busy - base.busy),
            ("  of which not the above (other sessions, Redis, this bench)",
             final.busy - base.busy - ours))
    print("| CPU | seconds | cores | s per 1,000 orders checked |")
    print("|---|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {seconds / elapsed:.2f} | {seconds * per_k:.3f} |")
    print()
    db = {k: final.db[k] - base.db[k] for k in final.db}
    db["inserted"] -= first.inserted  # the bench's own first_check rows
    print("| PostgreSQL per 1,000 orders checked | commits | rows fetched | rows inserted | "
          "rows updated | rows deleted | blocks read (disk) | WAL MB (server-wide) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| this database | {db['commits'] * per_k:,.0f} | {db['fetched'] * per_k:,.0f} | "
          f"{db['inserted'] * per_k:,.0f} | {db['updated'] * per_k:,.0f} | "
          f"{db['deleted'] * per_k:,.0f} | {db['blks_read'] * per_k:,.0f} | "
          f"{db['wal'] * per_k / 1024 / 1024:.2f} |")
    print(f"transactions/s {db['commits'] / elapsed:,.0f}, rows updated/s "
          f"{db['updated'] / elapsed:,.0f}, WAL {db['wal'] / elapsed / 1024 / 1024:.1f} MB/s "
          f"(server-wide), rollbacks {db['rollbacks']:.0f}")
    print()
    summary = plan.summary(plan_start)
    print("| planning per tick | ticks | mean ms | p50 ms (bucket) | p99 ms (bucket) | "
          "max 3s-window mean ms | shards per tick |")
    print("|---|---|---|---|---|---|---|")
    print(f"| whole run | {summary['ticks']:.0f} | {summary['mean'] * 1000:.1f} | "
          f"≤{summary['p50'] * 1000:g} | ≤{summary['p99'] * 1000:g} | "
          f"{summary['max'] * 1000:.1f} | {summary['shards'] / max(1, summary['ticks']):.1f} |")
    if plan_interval is not None:
        early = PlanStats(plan.url, first=plan_start, last=plan_interval).summary()
        print(f"| first interval | {early['ticks']:.0f} | {early['mean'] * 1000:.1f} | "
              f"≤{early['p50'] * 1000:g} | ≤{early['p99'] * 1000:g} | | "
              f"{early['shards'] / max(1, early['ticks']):.1f} |")
    if reads:
        due_q, top_q = (sorted(r[i] for r in reads) for i in (0, 1))
        dispatcher_cpu = final.dispatcher_cpu - base.dispatcher_cpu
        print(f"the planner's read queries, run by the bench every "
              f"{PROGRESS_EVERY * PROBE_EVERY:g}s: due "
              f"orders median {due_q[len(due_q) // 2] * 1000:.1f} ms (max "
              f"{due_q[-1] * 1000:.1f}), top-ups median {top_q[len(top_q) // 2] * 1000:.1f} ms "
              f"(max {top_q[-1] * 1000:.1f}); dispatcher CPU per planning tick "
              f"{dispatcher_cpu / max(1, summary['ticks']) * 1000:.1f} ms")
    print()
    print("| size MB | database | orders (heap + indexes) | orders heap | orders indexes | "
          "ledger_entries | outbox | orders live / dead tuples | autovacuums of orders |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, s in (("after seeding", seeded_sizes), ("at the end", end_sizes)):
        print(f"| {label} | {s['database'] / mb:,.0f} | {s['orders'] / mb:,.0f} | "
              f"{s['orders_heap'] / mb:,.0f} | {s['orders_indexes'] / mb:,.0f} | "
              f"{s['ledger'] / mb:,.0f} | {s['outbox'] / mb:,.1f} | "
              f"{s['orders_live']:,} / {s['orders_dead']:,} | {s['autovacuums']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--poll-interval", type=int, default=300)
    parser.add_argument("--duration", type=float,
                        help="measured seconds (default: one poll interval + 60)")
    parser.add_argument("--change-rate", type=float, default=0.10,
                        help="share of orders Canceled/Partial at the providers")
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--database-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="admin URL: a fresh database is created next to this one")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the database and the processes' logs")
    args = parser.parse_args()
    with bench_redis(args.redis_url) as redis_url:
        run(args, redis_url)


if __name__ == "__main__":
    main()
