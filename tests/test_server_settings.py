"""Database server settings the operator is warned about: PostgreSQL's autovacuum switched off
(every check leaves dead row versions of its order behind)."""

from __future__ import annotations

import logging

import pytest

from dispatcher.loop import log_server_warnings
from paxyo.cli import main
from paxyo.store.engine import open_engine
from paxyo.store.server_settings import AUTOVACUUM_OFF, server_warnings, warnings_for


@pytest.mark.parametrize(("dialect", "autovacuum", "expected"), [
    ("postgresql", "off", [AUTOVACUUM_OFF]),
    ("postgresql", " OFF ", [AUTOVACUUM_OFF]),
    ("postgresql", "on", []),
    ("postgresql", None, []),
    ("sqlite", "off", []),
    ("mysql", "off", []),
])
def test_only_postgresql_with_autovacuum_off_is_warned_about(dialect, autovacuum, expected):
    assert warnings_for(dialect, autovacuum) == expected


def _autovacuum(engine) -> str | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql("SHOW autovacuum").scalar()


def test_status_and_the_dispatcher_say_what_the_server_has(any_database_url, redis_url,
                                                          redis_prefix, monkeypatch, capsys,
                                                          caplog):
    """Read from the real server: PostgreSQL's setting as it stands (this workplace's
    servers run with autovacuum off), and nothing for SQLite or MySQL."""
    engine = open_engine(any_database_url, pool_size=1)
    try:
        expected = warnings_for(engine.dialect.name, _autovacuum(engine))
        assert server_warnings(engine) == expected
        with caplog.at_level(logging.WARNING, logger="paxyo.dispatcher"):
            log_server_warnings(engine)  # before main(), which configures paxyo's logging
        assert [r.getMessage() for r in caplog.records] == expected
        for var, value in {"DATABASE_URL": any_database_url, "REDIS_URL": redis_url,
                           "PAXYO_REDIS_PREFIX": redis_prefix}.items():
            monkeypatch.setenv(var, value)
        assert main(["status"]) == 0
        printed = [line.removeprefix("warning: ") for line in
                   capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
        assert printed == expected
    finally:
        engine.dispose()


def test_an_unreachable_database_does_not_stop_the_dispatcher_starting(caplog):
    engine = open_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    try:
        with caplog.at_level(logging.DEBUG, logger="paxyo.dispatcher"):
            log_server_warnings(engine)  # does not raise
        assert any("database settings not read" in r.getMessage() for r in caplog.records)
    finally:
        engine.dispose()
