"""Engine creation and transaction helpers for SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

log = logging.getLogger("paxyo.store")

T = TypeVar("T")

# MySQL deadlock / lock wait timeout, PostgreSQL serialization failure / deadlock.
_RETRYABLE_MYSQL = {1213, 1205}
_RETRYABLE_PG = {"40001", "40P01"}


def open_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine whose ``begin()`` takes the write lock up front on SQLite."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _make_sqlite_transactional(engine)
        return engine
    kwargs: dict[str, object] = {"pool_pre_ping": True, "pool_size": pool_size,
                                 "max_overflow": pool_size * 2}
    if url.startswith("mysql"):
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
    return create_engine(url, **kwargs)


WRITE_OPTION = "paxyo_write"  # execution option marking a connection's transaction as a write


def _make_sqlite_transactional(engine: Engine) -> None:
    """pysqlite's own transaction handling defers locks; take them at BEGIN instead.

    A write transaction (:func:`transactional`) begins IMMEDIATE, which serialises writers,
    so its read-then-write sees no concurrent writer: the SQLite equivalent of SELECT ... FOR
    UPDATE. Everything else begins deferred: in WAL mode readers then neither wait for the
    write lock nor hold it.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_retryable(exc: BaseException) -> bool:
    """A lock conflict that a new attempt of the same transaction may not meet."""
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _RETRYABLE_PG:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _RETRYABLE_MYSQL:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(orig)


@contextlib.contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


def transactional(engine: Engine, fn: Callable[[Connection], T], *, attempts: int = 5) -> T:
    """Run ``fn`` in one transaction, retried on deadlocks and serialization failures."""
    try:  # the common case, without building a retry controller for every transaction
        with _write_transaction(engine) as conn:
            return fn(conn)
    except DBAPIError as exc:
        if attempts <= 1 or not is_retryable(exc):
            raise
        log.warning("transaction retried: %s", exc.orig)
    for attempt in Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(attempts - 1),
        wait=wait_random_exponential(multiplier=0.02, max=1),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt, _write_transaction(engine) as conn:
            return fn(conn)
    raise AssertionError("unreachable")  # pragma: no cover
