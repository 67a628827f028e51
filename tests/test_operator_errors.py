"""Operators get one line naming what failed and a non-zero exit code, not a traceback
(``paxyo`` run as a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.worker import SimpleWorker

from tests.conftest import PG_ADMIN_URL
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]


def paxyo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paxyo.cli", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


PG_SERVER = PG_ADMIN_URL.rsplit("/", 1)[0]  # postgresql+psycopg://postgres@127.0.0.1:5432


@pytest.mark.parametrize("url, says", [
    (f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{free_port()}/paxyo", "Connection refused"),
    (f"{PG_SERVER}/paxyo_no_such_database", 'database "paxyo_no_such_database" does not exist'),
], ids=["unreachable-port", "no-such-database"])
def test_db_upgrade_names_the_database_it_cannot_reach(url, says):
    proc = paxyo("--database-url", url, "db", "upgrade")
    line = one_line(proc)
    assert proc.returncode == 1
    assert line.startswith("paxyo db upgrade: cannot migrate the database at "), line
    assert url.replace(":s3cret@", ":***@") in line and "s3cret" not in line, line
    assert says in line, line


def test_db_upgrade_rejects_a_url_that_is_no_database_url():
    proc = paxyo("--database-url", "redis://127.0.0.1:6379/0", "db", "upgrade")
    line = one_line(proc)
    assert proc.returncode == 2
    assert "DATABASE_URL" in line and "redis://127.0.0.1:6379/0" in line, line


def test_requeue_of_an_unknown_job_says_so_and_requeues_nothing(redis_url, redis_prefix):
    queue_name = f"{redis_prefix}-q"
    client = redis.Redis.from_url(redis_url)
    try:
        queue = Queue(queue_name, connection=client)
        failed = queue.enqueue("tests.test_ops.boom").id
        SimpleWorker([queue], connection=client).work(burst=True)
        env = {"REDIS_URL": redis_url, "PAXYO_QUEUE": queue_name}
        proc = paxyo("failed", "requeue", failed, "nosuchjob", env=env)
        line = one_line(proc)
        assert proc.returncode == 1
        assert "nosuchjob" in line and queue_name in line and failed not in line, line
        assert queue.count == 0  # the failed job stayed where it was
        assert paxyo("failed", "requeue", failed, env=env).returncode == 0
        assert queue.job_ids == [failed]
    finally:
        Queue(queue_name, connection=client).empty()
        client.close()


def test_failed_list_names_an_unreachable_redis():
    proc = paxyo("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "failed", "list")
    line = one_line(proc)
    assert proc.returncode == 1
    assert line.startswith("paxyo failed list: ConnectionError"), line
