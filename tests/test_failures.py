"""Failure tests on real processes: the pipeline converges, with money and events exact.

Each test runs ``paxyo dispatcher`` and ``paxyo worker`` as subprocesses against a real
simulator, breaks something (SIGKILL a worker mid-shard, kill -9 the leader dispatcher,
restart Redis, provider faults), lets the provider reach its final states and then checks:
every order converged to the provider's final state, every balance equals its ledger and the
exact expected total, every refund is there exactly once, and every outbox event is in the
stream exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import orjson
import psutil
import pytest
import redis
import sqlalchemy as sa
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from paxyo.accounts import deposit
from paxyo.cli.private_redis import PrivateRedis
from paxyo.keys import Keys
from paxyo.ledger import ledger_mismatches
from paxyo.orders import NewOrder, place_order
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade
from paxyo.store.schema import accounts, ledger_entries, orders, outbox
from tests.conftest import make_database
from tests.support import ServerThread, SimulatorHandle, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
D = Decimal
POLL_INTERVAL = 2
LEASE_SECONDS = 4
SIM_KEY = "sim-key"
PID_BASE = 50_000
USERS = (111, 222, 333)
DEPOSIT = D("1000.00")


# -- the system under test --------------------------------------------------------------


@dataclass
class Stack:
    """A database, a simulator, Redis and the subprocesses started against them."""

    tmp_path: Path
    database_url: str
    redis_url: str
    prefix: str
    simulators: dict[str, SimulatorHandle]
    engine: sa.Engine
    procs: list[subprocess.Popen] = field(default_factory=list)
    finals: dict[int, tuple[str, int]] = field(default_factory=dict)
    charges: dict[int, Decimal] = field(default_factory=dict)
    owners: dict[int, int] = field(default_factory=dict)
    provider_timeout: float = 5.0

    @property
    def simulator(self) -> SimulatorHandle:
        """The first provider's simulator (the only one in most tests)."""
        return next(iter(self.simulators.values()))

    def provider_of(self, oid: int) -> str:
        names = list(self.simulators)
        return names[oid % len(names)]

    @property
    def queue_name(self) -> str:
        return f"{self.prefix}-q"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                "PAXYO_REDIS_PREFIX": self.prefix, "PAXYO_QUEUE": self.queue_name,
                **{f"PAXYO_PROVIDER_{name.upper()}_URL": sim.api_url
                   for name, sim in self.simulators.items()},
                **{f"PAXYO_PROVIDER_{name.upper()}_KEY": sim.key
                   for name, sim in self.simulators.items()},
                "PAXYO_POLL_INTERVAL": str(POLL_INTERVAL),
                "PAXYO_LEASE_SECONDS": str(LEASE_SECONDS),
                "PAXYO_PROVIDER_ATTEMPTS": "2",
                "PAXYO_PROVIDER_TIMEOUT": str(self.provider_timeout)}

    def spawn(self, command: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{command}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "paxyo.cli", command], cwd=ROOT,
                                env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process and its children (an RQ worker forks its scheduler), like a
        crashed dyno; the children would otherwise live on as orphans."""
        children = psutil.Process(proc.pid).children(recursive=True)
        for victim in [proc, *children]:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                os.kill(victim.pid, signal.SIGKILL)
        proc.wait(5)

    def log_of(self, proc: subprocess.Popen) -> str:
        index = self.procs.index(proc)
        command = proc.args[3]  # type: ignore[index]
        return (self.tmp_path / f"{command}-{index}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- orders ------------------------------------------------------------------------

    def seed(self, count: int) -> None:
        """``count`` open orders over three users, charges that make refunds round down."""
        for user in USERS:
            deposit(self.engine, user, DEPOSIT, f"seed-{user}", 2)
        for oid in range(1, count + 1):
            user = USERS[oid % len(USERS)]
            charge = D("1.01") + D(oid % 13) * D("0.37")
            provider = self.provider_of(oid)
            place_order(self.engine, NewOrder(oid, user, provider, str(PID_BASE + oid), 1000,
                                              charge), decimals=2, poll_interval=POLL_INTERVAL)
            self.charges[oid], self.owners[oid] = charge, user
            self.simulators[provider].set_order(PID_BASE + oid, status="Pending", remains=1000)

    def serve(self, states: Callable[[int], tuple[str, int]]) -> None:
        for oid in self.charges:
            status, remains = states(oid)
            self.simulators[self.provider_of(oid)].set_order(PID_BASE + oid, status=status,
                                                             remains=remains)

    def serve_finals(self) -> None:
        """Every order reaches its final state: a quarter each Canceled and In-progress-then-
        Completed, half Partial with assorted remains."""
        for oid in self.charges:
            kind = oid % 4
            self.finals[oid] = (("Canceled", 1000) if kind == 0 else
                                ("Completed", 0) if kind == 1 else
                                ("Partial", 1 + (oid * 37) % 999))
        self.serve(lambda oid: self.finals[oid])

    def expected_refund(self, oid: int) -> Decimal:
        status, remains = self.finals[oid]
        charge = self.charges[oid]
        if status == "Canceled":
            return charge
        if status == "Partial":
            return (charge * min(max(remains, 0), 1000) / 1000).quantize(D("0.01"), ROUND_DOWN)
        return D("0.00")

    # -- waiting -------------------------------------------------------------------------

    def statuses(self) -> dict[int, tuple[str, int | None]]:
        with self.engine.connect() as conn:
            return {r.id: (r.status, r.remains) for r in conn.execute(
                sa.select(orders.c.id, orders.c.status, orders.c.remains))}

    def unpublished(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                .where(outbox.c.published_at.is_(None))).scalar_one()

    def wait_until(self, what: str, done: Callable[[], bool], timeout: float = 40) -> float:
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                logs = "\n".join(f"--- {p.args[3]} (rc={p.poll()})\n{self.log_of(p)[-3000:]}"
                                 for p in self.procs)
                pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs}")
            time.sleep(0.3)
        return time.monotonic() - started

    def wait_for_all(self, states: Callable[[int], tuple[str, int]], timeout: float = 40) -> float:
        want = {oid: states(oid) for oid in self.charges}
        return self.wait_until("every order to reach its served state",
                               lambda: self.statuses() == want, timeout)

    def wait_converged(self, timeout: float = 40) -> float:
        took = self.wait_for_all(lambda oid: self.finals[oid], timeout)
        self.wait_until("the outbox to be published", lambda: self.unpublished() == 0, 15)
        return took

    # -- checks --------------------------------------------------------------------------

    def assert_converged(self) -> None:
        assert self.statuses() == self.finals
        with self.engine.connect() as conn:
            assert ledger_mismatches(conn) == []
            balances = {r.user_id: D(r.balance) for r in conn.execute(sa.select(accounts))}
            refunds = conn.execute(
                sa.select(ledger_entries.c.order_id, ledger_entries.c.amount)
                .where(ledger_entries.c.kind == "refund")).all()
            refunded = {r.id: D(r.refunded) for r in conn.execute(
                sa.select(orders.c.id, orders.c.refunded))}
            outbox_ids = [r.id for r in conn.execute(sa.select(outbox.c.id))]
        for user in USERS:
            mine = [oid for oid, owner in self.owners.items() if owner == user]
            expected = (DEPOSIT - sum(self.charges[o] for o in mine)
                        + sum(self.expected_refund(o) for o in mine))
            assert balances[user] == expected, f"user {user}"
        per_order = Counter(order_id for order_id, _ in refunds)
        for oid in self.charges:
            want = self.expected_refund(oid)
            assert per_order[oid] == (1 if want > 0 else 0), f"refund entries of order {oid}"
            assert refunded[oid] == want, f"order {oid} refunded"
        assert sum(D(a) for _, a in refunds) == sum(map(self.expected_refund, self.charges))
        self.assert_stream_has_each_event_once(outbox_ids)

    def assert_stream_has_each_event_once(self, outbox_ids: list[int]) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            stream = client.xrange(Keys(self.prefix).events)
        finally:
            client.close()
        published = Counter(int(entry[b"i"]) for _, entry in stream)
        duplicates = {i: n for i, n in published.items() if n > 1}
        assert duplicates == {}, f"events published more than once: {duplicates}"
        assert sorted(published) == sorted(outbox_ids)
        # the newest event of each order (by id: a swept event may reach the stream after a
        # newer one) carries its final state, and its events' refunds add up to the refund
        last: dict[int, dict] = {}
        refund_sum: Counter[int] = Counter()
        for _, entry in sorted(stream, key=lambda item: int(item[1][b"i"])):
            event = orjson.loads(entry[b"d"])
            if event["type"] == "order.updated":
                last[event["order_id"]] = event
                refund_sum[event["order_id"]] += D(event["refund"])
        for oid, (status, remains) in self.finals.items():
            assert (last[oid]["status"], last[oid]["remains"]) == (status, remains)
            assert refund_sum[oid] == self.expected_refund(oid)

    def jobs(self) -> list[Job]:
        client = redis.Redis.from_url(self.redis_url)
        ids: set[str] = set()
        for registry in (FinishedJobRegistry, FailedJobRegistry, StartedJobRegistry):
            ids.update(registry(self.queue_name, connection=client).get_job_ids())
        ids.update(Queue(self.queue_name, connection=client).get_job_ids())
        return [j for j in Job.fetch_many(sorted(ids), connection=client) if j is not None]


def _drop_rq_keys(redis_url: str, queue_name: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for pattern in (f"rq:*:{queue_name}", f"rq:*:{queue_name}:*")
                for k in client.scan_iter(match=pattern, count=1000)]
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@contextlib.contextmanager
def running_stack(tmp_path: Path, database_url: str, redis_url: str, prefix: str,
                  providers: tuple[str, ...] = ("sim",)) -> Iterator[Stack]:
    from providers.simulator import create_simulator_app

    upgrade(database_url)
    servers = {name: ServerThread(lambda: create_simulator_app(
        SIM_KEY, seed=3, auto_advance=False)) for name in providers}
    for server in servers.values():
        server.start()
    engine = open_engine(database_url)
    stack = Stack(tmp_path, database_url, redis_url, prefix,
                  {name: SimulatorHandle(s.url, SIM_KEY) for name, s in servers.items()}, engine)
    try:
        yield stack
    finally:
        stack.stop_all()
        for server in servers.values():
            server.stop()
        engine.dispose()
        _drop_rq_keys(redis_url, stack.queue_name)


@pytest.fixture
def stack(tmp_path, redis_url, redis_prefix) -> Iterator[Stack]:
    with running_stack(tmp_path, f"sqlite:///{tmp_path / 'paxyo.db'}", redis_url,
                       redis_prefix) as running:
        yield running


# -- (a) a worker dies in the middle of a shard ------------------------------------------


def test_a_worker_killed_mid_shard_is_replaced_and_nothing_is_lost(stack):
    stack.seed(150)
    stack.serve_finals()
    stack.simulator.faults(latency_ms=2000)
    stack.spawn("dispatcher")
    doomed = stack.spawn("worker")
    stack.wait_until("the first status call to be in flight",
                     lambda: stack.simulator.stats()["status_requests"] >= 1, 20)
    time.sleep(0.5)
    stack.kill9(doomed)
    assert all(s == ("Pending", 1000) for s in stack.statuses().values()), \
        "the killed shard must not have applied anything"
    stack.spawn("worker")
    took = stack.wait_converged()
    stack.assert_converged()
    assert took < 30
    assert stack.simulator.stats()["status_requests"] >= 3  # the killed shard was asked again


# -- (b) the leader dispatcher dies -------------------------------------------------------


def _leader_identity(stack: Stack) -> str | None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        value = client.get(Keys(stack.prefix).dispatcher_lock)
    finally:
        client.close()
    return value.decode() if value else None


def _dispatcher_identity(stack: Stack, proc: subprocess.Popen) -> str:
    for line in stack.log_of(proc).splitlines():
        if " started (poll interval" in line:
            return line.split("dispatcher ")[1].split()[0]
    raise AssertionError("dispatcher did not log its identity")


def test_the_standby_dispatcher_takes_over_and_no_order_is_enqueued_twice(stack):
    stack.seed(300)
    stack.serve(lambda oid: ("In progress", 500))
    first = stack.spawn("dispatcher")
    stack.wait_until("a leader", lambda: _leader_identity(stack) is not None, 15)
    second = stack.spawn("dispatcher")
    stack.spawn("worker")
    stack.spawn("worker")
    stack.wait_for_all(lambda oid: ("In progress", 500))
    stack.wait_until("both dispatchers to log", lambda: all(
        " started (poll interval" in stack.log_of(p) for p in (first, second)), 10)
    leader = _leader_identity(stack)
    by_identity = {_dispatcher_identity(stack, p): p for p in (first, second)}
    (doomed,) = [p for ident, p in by_identity.items() if leader.startswith(ident)]
    (standby,) = [p for p in (first, second) if p is not doomed]
    time.sleep(1.5)  # a few more cycles under the first leader
    stack.kill9(doomed)
    killed_at = time.monotonic()
    stack.serve_finals()
    standby_id = _dispatcher_identity(stack, standby)
    stack.wait_until("the standby to lead", lambda: (_leader_identity(stack) or "")
                     .startswith(standby_id), 15)
    takeover = time.monotonic() - killed_at
    assert takeover < 8, f"takeover took {takeover:.1f}s"
    stack.wait_converged()
    stack.assert_converged()
    jobs = stack.jobs()
    # every shard that called the provider is seen; under load a queued shard may outlive its
    # lease, and then finds its orders taken by a later shard and makes no call
    calling = sum(1 for job in jobs for called in _calls(job) if called)
    assert calling == stack.simulator.stats()["status_requests"]
    _assert_no_order_in_two_live_shards(jobs)


def _shards(job: Job) -> list[list[int]]:
    """The order ids of each shard a job carries."""
    return [list(ids) for _, ids, _ in job.args[0]]


def _calls(job: Job) -> list[bool]:
    """Per shard of the job: whether it called its provider (not still waiting in the queue,
    nor found its lease taken or its provider held back)."""
    if job.is_queued or job.is_scheduled or not job.is_finished:
        return [False] * len(job.args[0])
    return [not result.get("skipped") for result in job.return_value()]


def _finished_at(job: Job) -> list[datetime | None]:
    """Per shard of the job: when it let go of its orders (None while it may hold them)."""
    if not job.is_finished:
        return [job.ended_at] * len(job.args[0])
    return [datetime.fromtimestamp(r["finished_at"], UTC) for r in job.return_value()]


def _assert_no_order_in_two_live_shards(jobs: list[Job]) -> None:
    """A later shard may take an order only after the earlier shard ended or its lease ran out."""
    jobs = sorted(jobs, key=lambda j: j.enqueued_at)
    for i, earlier in enumerate(jobs):
        for ids, finished in zip(map(set, _shards(earlier)), _finished_at(earlier),
                                 strict=True):
            live_until: datetime = earlier.enqueued_at + _seconds(LEASE_SECONDS)
            if finished is not None:
                live_until = min(live_until, finished)
            for later in jobs[i + 1:]:
                if later.enqueued_at >= live_until:
                    break
                overlap = ids & {oid for shard in _shards(later) for oid in shard}
                assert not overlap, (f"orders {sorted(overlap)[:5]} in {earlier.id} and "
                                     f"{later.id} while the first still held them")


def _seconds(n: float):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(seconds=n)


# -- (c) Redis restarts ------------------------------------------------------------------


def test_processes_ride_out_a_redis_restart(tmp_path):
    server = PrivateRedis(free_port(), persist_dir=tmp_path / "redis")
    server.start()
    try:
        with running_stack(tmp_path, f"sqlite:///{tmp_path / 'paxyo.db'}", server.url,
                           f"paxyotest:{uuid.uuid4().hex[:10]}") as stack:
            stack.seed(200)
            stack.serve(lambda oid: ("In progress", 500))
            stack.spawn("dispatcher")
            stack.spawn("worker")
            stack.spawn("worker")
            stack.wait_for_all(lambda oid: ("In progress", 500))
            server.stop()
            stack.serve_finals()  # the provider moves on while Redis is down
            time.sleep(4)
            server.start()
            stack.wait_converged(timeout=45)
            assert [p.poll() for p in stack.procs] == [None] * 3, "a process gave up"
            stack.assert_converged()
    finally:
        server.stop()


# -- (d) the provider misbehaves ---------------------------------------------------------


FAULTS = {  # one provider per kind of fault, each served to every request while it lasts
    "fivexx": {"error_rate": 1.0},
    "html": {"html_rate": 1.0},
    "stall": {"timeout_rate": 1.0},
    "limited": {"rate_limit_per_min": 1},
}


def test_orders_converge_after_5xx_html_timeouts_and_429(tmp_path, redis_url, redis_prefix):
    with running_stack(tmp_path, f"sqlite:///{tmp_path / 'paxyo.db'}", redis_url, redis_prefix,
                       providers=("healthy", *FAULTS)) as stack:
        stack.provider_timeout = 1.5  # a stalled request fails fast
        stack.seed(250)
        stack.serve(lambda oid: ("In progress", 500))
        for name, fault in FAULTS.items():
            stack.simulators[name].faults(**fault)
        stack.spawn("dispatcher")
        stack.spawn("worker")
        stack.spawn("worker")
        healthy = {oid for oid in stack.charges if stack.provider_of(oid) == "healthy"}
        stack.wait_until("the healthy provider's orders to move", lambda: all(
            stack.statuses()[oid] == ("In progress", 500) for oid in healthy), 15)
        stack.wait_until("every faulty provider to serve its fault", lambda: all(
            stack.simulators[name].stats()["faults"] for name in FAULTS), 40)
        for name, fault in FAULTS.items():
            stack.simulators[name].faults(**{key: 0 for key in fault})
        assert set(stack.statuses().values()) <= {("Pending", 1000), ("In progress", 500)}
        stack.serve_finals()
        stack.wait_converged(timeout=50)
        stack.assert_converged()


# -- the same on PostgreSQL --------------------------------------------------------------


def test_a_killed_worker_on_postgresql(tmp_path, redis_url, redis_prefix):
    for url in make_database("postgresql", tmp_path):
        with running_stack(tmp_path, url, redis_url, redis_prefix) as stack:
            stack.seed(150)
            stack.serve_finals()
            stack.simulator.faults(latency_ms=1500)
            stack.spawn("dispatcher")
            doomed = stack.spawn("worker")
            stack.wait_until("the first status call to be in flight",
                             lambda: stack.simulator.stats()["status_requests"] >= 1, 20)
            stack.kill9(doomed)
            stack.spawn("worker")
            stack.spawn("worker")
            stack.wait_converged()
            stack.assert_converged()


# -- (e) SIGTERM, as Heroku sends it: the shard in flight finishes, then the worker exits ----


def test_sigterm_lets_the_shard_in_flight_finish_then_the_worker_exits(stack):
    stack.seed(60)  # one shard
    stack.serve_finals()
    stack.simulator.faults(latency_ms=2000)
    stack.spawn("dispatcher")
    worker = stack.spawn("worker")
    stack.wait_until("the status call to be in flight",
                     lambda: stack.simulator.stats()["status_requests"] >= 1, 20)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    took = time.monotonic() - started
    assert worker.returncode == 0, stack.log_of(worker)[-2000:]
    assert took < 25  # inside Heroku's 30 s grace period
    # the job was not cut off: its answers were applied before the worker left
    assert stack.statuses() == stack.finals
    stack.wait_until("the outbox to be published", lambda: stack.unpublished() == 0, 15)
    stack.assert_converged()
