"""``paxyo worker`` as a real process against a private Redis that is down at start or restarts:
the worker waits (one log line per outage), keeps running and does the next shard; and its
jobs use the database and Redis its command line names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from dispatcher.loop import Dispatcher
from monitoring.metrics import process_metrics
from paxyo.accounts import deposit
from paxyo.cli.private_redis import PrivateRedis
from paxyo.clock import utcnow
from paxyo.orders import NewOrder, place_order
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade
from paxyo.store.schema import orders
from tests.support import SimulatorHandle, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PID_BASE = 80_000
OUTAGE_LINE = "Redis unavailable at"
BACK_LINE = "is back after"


def wait_until(what: str, done: Callable[[], bool], timeout: float,
               context: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(0.2)


@dataclass
class Rig:
    """A database, a simulator, a private Redis (started or not) and the workers started."""

    tmp_path: Path
    database_url: str
    redis: PrivateRedis
    prefix: str
    simulator: SimulatorHandle
    engine: sa.Engine
    procs: list[tuple[subprocess.Popen[bytes], Path]]
    next_order: int = 1

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis.url,
                "PAXYO_REDIS_PREFIX": self.prefix, "PAXYO_QUEUE": f"{self.prefix}-q",
                "PAXYO_PROVIDER_SIM_URL": self.simulator.api_url,
                "PAXYO_PROVIDER_SIM_KEY": self.simulator.key,
                "PAXYO_PROVIDER_ATTEMPTS": "2", "PAXYO_PROVIDER_TIMEOUT": "5"}

    def start_worker(self, *args: str, env: dict[str, str] | None = None
                     ) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"worker-{len(self.procs)}.err"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "paxyo.cli", *args, "worker"],
                                    cwd=ROOT, env=env or self.env(), stdout=subprocess.DEVNULL,
                                    stderr=err)
        self.procs.append((proc, log))
        return proc

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.procs if p is proc).read_text(errors="replace")

    def enqueue_shard(self, count: int = 5) -> list[int]:
        """``count`` new due orders the simulator says are In progress, enqueued as a shard
        (by a dispatcher's tick, in this process)."""
        ids = list(range(self.next_order, self.next_order + count))
        self.next_order += count
        deposit(self.engine, 111, Decimal("10.00") * count, f"seed-{ids[0]}", 2)
        for oid in ids:
            place_order(self.engine, NewOrder(oid, 111, "sim", str(PID_BASE + oid), 1000,
                                              Decimal("10.00")), decimals=2, poll_interval=30)
            self.simulator.set_order(PID_BASE + oid, status="In progress", remains=500)
        with self.engine.begin() as conn:
            conn.execute(sa.update(orders).where(orders.c.id.in_(ids))
                         .values(next_check_at=utcnow() - timedelta(seconds=1)))
        client = redis.Redis.from_url(self.redis.url)
        dispatcher = Dispatcher(self.settings, self.engine, client, process_metrics())
        try:
            shards = dispatcher.tick()
        finally:
            # as a stopping dispatcher does: the next call's new dispatcher must not wait out
            # this one's leader lock (a Redis restarted with its data still holds it)
            dispatcher.lock.release()
            client.close()
        assert set(ids) <= {i for s in shards for i in s.order_ids}  # (topped up with others)
        return ids

    def checked(self, ids: list[int]) -> bool:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(orders.c.status).where(orders.c.id.in_(ids))).all()
        return [r.status for r in rows] == ["In progress"] * len(ids)

    def wait_checked(self, ids: list[int], proc: subprocess.Popen[bytes],
                     timeout: float = 30) -> None:
        wait_until(f"orders {ids} to be checked", lambda: self.checked(ids), timeout,
                   lambda: f"worker rc={proc.poll()}\n{self.stderr_of(proc)[-4000:]}")

    def wait_logged(self, proc: subprocess.Popen[bytes], text: str, timeout: float = 15) -> None:
        wait_until(f"the worker to log {text!r}", lambda: text in self.stderr_of(proc)
                   or proc.poll() is not None, timeout, lambda: self.stderr_of(proc)[-4000:])
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n" \
                                    f"{self.stderr_of(proc)[-4000:]}"

    def stop_workers(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def rig(tmp_path, simulator) -> Iterator[Rig]:
    database_url = f"sqlite:///{tmp_path / 'paxyo.db'}"
    upgrade(database_url)
    engine = open_engine(database_url)
    server = PrivateRedis(free_port(), persist_dir=tmp_path / "redis")
    rig = Rig(tmp_path, database_url, server, "paxyotest:outage", simulator, engine, [])
    try:
        yield rig
    finally:
        rig.stop_workers()
        rig.redis.stop()
        server.stop()
        engine.dispose()


def assert_clean(stderr: str, outages: int) -> None:
    assert "Traceback" not in stderr, stderr[-4000:]
    assert stderr.count(OUTAGE_LINE) == outages, stderr[-4000:]
    assert stderr.count(BACK_LINE) == outages, stderr[-4000:]


def stop_cleanly(rig: Rig, proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(25) == 0, rig.stderr_of(proc)[-4000:]


def test_a_worker_started_while_redis_is_down_waits_then_works(rig):
    worker = rig.start_worker()
    rig.wait_logged(worker, OUTAGE_LINE)
    line = next(x for x in rig.stderr_of(worker).splitlines() if OUTAGE_LINE in x)
    assert f"127.0.0.1:{rig.redis.port}" in line and "retrying in 1s" in line, line
    time.sleep(4)  # the outage goes on: the worker probes again, quietly
    assert worker.poll() is None, rig.stderr_of(worker)
    assert rig.stderr_of(worker).count(OUTAGE_LINE) == 1, rig.stderr_of(worker)
    rig.redis.start()
    rig.wait_logged(worker, BACK_LINE, timeout=40)
    rig.wait_checked(rig.enqueue_shard(), worker)
    stop_cleanly(rig, worker)
    assert_clean(rig.stderr_of(worker), outages=1)


def test_sigterm_ends_the_wait_for_redis_at_start(rig):
    worker = rig.start_worker()
    rig.wait_logged(worker, OUTAGE_LINE)
    stop_cleanly(rig, worker)
    assert "Traceback" not in rig.stderr_of(worker)


@pytest.mark.parametrize("kill", ["SIGTERM", "SIGKILL"])
def test_a_worker_rides_out_a_redis_restart(rig, kill):
    """SIGTERM: Redis stops cleanly and comes back with its data (AOF); SIGKILL: it dies and
    comes back empty (the worker's registration, the queue and the scheduler's lock lost)."""
    if kill == "SIGKILL":
        rig.redis = PrivateRedis(rig.redis.port)  # no persistence
    rig.redis.start()
    worker = rig.start_worker()
    rig.wait_checked(rig.enqueue_shard(), worker)
    if kill == "SIGTERM":
        rig.redis.stop()
    else:
        rig.redis.process.kill()
        rig.redis.process.wait(5)
    time.sleep(4)  # a few seconds down: the worker, its heartbeats and its scheduler notice
    rig.redis.start()
    rig.wait_checked(rig.enqueue_shard(), worker, timeout=40)
    client = redis.Redis.from_url(rig.redis.url)
    try:  # registered again (the dispatcher sizes the queue by the registered workers)
        from rq import Worker
        assert Worker.count(connection=client) == 1
    finally:
        client.close()
    stop_cleanly(rig, worker)
    assert_clean(rig.stderr_of(worker), outages=1)


def test_sigterm_during_an_outage_stops_the_worker_at_once(rig):
    rig.redis.start()
    worker = rig.start_worker()
    rig.wait_checked(rig.enqueue_shard(), worker)
    rig.redis.process.kill()
    rig.redis.process.wait(5)
    time.sleep(3)  # down for a while: the worker, its heartbeats and its scheduler notice
    stop_cleanly(rig, worker)
    stderr = rig.stderr_of(worker)
    assert "Traceback" not in stderr, stderr[-4000:]
    assert "stopped without Redis" in stderr, stderr[-4000:]


def test_the_command_lines_database_and_redis_reach_the_jobs(rig, tmp_path):
    """``paxyo --database-url X --redis-url Y worker`` with DATABASE_URL and REDIS_URL naming
    another database and a dead Redis: the jobs read and write X through Y."""
    rig.redis.start()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other)
    ids = rig.enqueue_shard()
    env = {**rig.env(), "DATABASE_URL": other, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run([sys.executable, "-m", "paxyo.cli", "--database-url", rig.database_url,
                           "--redis-url", rig.redis.url, "worker", "--burst"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert rig.checked(ids), proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    engine = open_engine(other)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 0
    finally:
        engine.dispose()


def test_a_killed_workers_scheduler_does_not_outlive_it(rig):
    """SIGKILL gives the worker no chance to stop the scheduler process it forked; the
    scheduler, riding out Redis outages, must not then wait for its Redis forever."""
    import psutil

    rig.redis.start()
    worker = rig.start_worker()
    rig.wait_checked(rig.enqueue_shard(), worker)
    wait_until("the worker's scheduler process",
               lambda: bool(psutil.Process(worker.pid).children()), 20)
    [scheduler] = psutil.Process(worker.pid).children()
    worker.kill()
    worker.wait(5)
    rig.redis.stop()  # the orphan's Redis goes too: it would wait on it
    wait_until("the orphaned scheduler to exit", lambda: not scheduler.is_running()
               or scheduler.status() == psutil.STATUS_ZOMBIE, 15)
