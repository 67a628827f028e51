"""Shared fixtures: real Redis, real databases (SQLite, PostgreSQL, MySQL/MariaDB), real HTTP.

Tests isolate themselves by a unique Redis key prefix and a fresh database each. Where
PostgreSQL or MySQL is unreachable the tests that need it skip, unless
PAXYO_REQUIRE_SERVICES=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from paxyo.cli.private_redis import PrivateRedis, answers
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade
from tests.support import (
    REQUIRE_SERVICES,
    ServerThread,
    SimulatorHandle,
    free_port,
    unavailable,
)

REDIS_URL = os.environ.get("PAXYO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "PAXYO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get(
    "PAXYO_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _unavailable(what: str, exc: Exception) -> None:
    unavailable(f"{what} unreachable: {exc}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis, or a private one started for the session when none answers."""
    if answers(REDIS_URL):
        yield REDIS_URL
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"Redis unreachable at {REDIS_URL} (PAXYO_REQUIRE_SERVICES=1)")
    server = PrivateRedis(free_port())
    yield server.start()
    server.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; the test's keys are deleted afterwards."""
    prefix = f"paxyotest:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _server_database(admin_url: str, what: str) -> Iterator[str]:
    name = f"paxyo_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        _unavailable(what, exc)
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def make_database(kind: str, tmp_path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'paxyo.db'}"
    elif kind == "postgresql":
        yield from _server_database(PG_ADMIN_URL, "PostgreSQL")
    else:
        yield from _server_database(MYSQL_ADMIN_URL, "MySQL/MariaDB")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, migrated database of each supported kind."""
    for url in make_database(request.param, tmp_path):
        upgrade(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'paxyo.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def any_engine(any_database_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(any_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    """A real simulator HTTP server (orders move only when the test says so)."""
    from providers.simulator import create_simulator_app

    key = "sim-key"
    server = ServerThread(lambda: create_simulator_app(key, seed=7, auto_advance=False))
    server.start()
    yield SimulatorHandle(server.url, key)
    server.stop()


@pytest.fixture
def settings(sqlite_url: str, redis_url: str, redis_prefix: str,
             simulator: SimulatorHandle) -> Settings:
    return Settings.from_env({
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_SIM_URL": simulator.api_url,
        "PAXYO_PROVIDER_SIM_KEY": simulator.key,
        "PAXYO_JWT_SECRET": "test-jwt-secret",
        "PAXYO_ADMIN_TOKEN": "test-admin-token",
        "PAXYO_PROVIDER_ATTEMPTS": "2",
        "PAXYO_PROVIDER_TIMEOUT": "5",
    })
