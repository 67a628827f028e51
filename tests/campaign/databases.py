"""A fresh database per run (SQLite file, or a new PostgreSQL / MariaDB database dropped
afterwards), killing its backends mid-transaction, and reading it back for the checks."""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from paxyo.events import event_bytes
from paxyo.store.migrate import upgrade
from paxyo.store.schema import accounts, ledger_entries, orders, outbox
from tests.campaign.invariants import LedgerRow, OrderRow, Snapshot
from tests.conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL

KINDS = ("sqlite", "postgresql", "mysql")
CAMPAIGN_APP = "paxyo-campaign"  # our own PostgreSQL sessions, never terminated
MONEY = Decimal("0.01")
BUSY_WAIT = 1.5  # seconds to watch for a session caught mid-statement or mid-transaction
BUSY_STATES = ("active", "idle in transaction", "Query", "Execute")


class RunDatabase:
    def __init__(self, kind: str, run_dir: Path) -> None:
        self.kind = kind
        self.name = f"paxyo_c_{uuid.uuid4().hex[:10]}"
        self.admin: sa.Engine | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{run_dir / 'paxyo.db'}"
        else:
            admin_url = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
            self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                          poolclass=sa.NullPool)
            self.url = admin_url.rsplit("/", 1)[0] + f"/{self.name}"
        self.engine: sa.Engine | None = None

    def create(self) -> None:
        if self.admin is not None:
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {self.name}")
        upgrade(self.url)
        connect_args = {"application_name": CAMPAIGN_APP} if self.kind == "postgresql" else {}
        self.engine = sa.create_engine(self.url, poolclass=sa.NullPool, connect_args=connect_args)

    def drop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            if self.kind == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name}")
        self.admin.dispose()

    @property
    def can_kill_backends(self) -> bool:
        return self.admin is not None

    def kill_backends(self, rng: random.Random, count: int) -> tuple[int, int]:
        """Terminate up to ``count`` sessions of the run's database (never ours), preferring
        ones caught in a statement or a transaction (watched for up to a second and a half);
        returns (killed, of which busy)."""
        assert self.admin is not None
        deadline = time.monotonic() + BUSY_WAIT
        with self.admin.connect() as conn:
            while True:
                rows = self._sessions(conn)
                busy = [r for r in rows if r[1] in BUSY_STATES]
                if busy or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            victims = rng.sample(busy, min(count, len(busy))) or rng.sample(
                rows, min(count, len(rows)))
            for ident, _ in victims:
                try:
                    if self.kind == "postgresql":
                        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": ident})
                    else:
                        conn.exec_driver_sql(f"KILL {int(ident)}")
                except DBAPIError:
                    pass  # it ended on its own meanwhile
        return len(victims), sum(1 for _, state in victims if state in BUSY_STATES)

    def _sessions(self, conn: sa.Connection) -> list[tuple[int, str]]:
        if self.kind == "postgresql":
            rows = conn.execute(sa.text(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = :db "
                "AND pid <> pg_backend_pid() AND application_name <> :app"),
                {"db": self.name, "app": CAMPAIGN_APP}).all()
        else:
            rows = conn.execute(sa.text(
                "SELECT id, command FROM information_schema.processlist "
                "WHERE db = :db AND id <> CONNECTION_ID()"), {"db": self.name}).all()
        return [(int(ident), str(state)) for ident, state in rows]

    def read(self, attempts: int = 5) -> dict[str, list[Any]]:
        """The store's rows (retried: our session may meet a MariaDB KILL too)."""
        assert self.engine is not None
        for attempt in range(attempts):
            try:
                with self.engine.connect() as conn:
                    return {
                        "orders": conn.execute(sa.select(orders)).all(),
                        "accounts": conn.execute(sa.select(accounts)).all(),
                        "ledger": conn.execute(sa.select(ledger_entries)).all(),
                        "outbox": conn.execute(
                            sa.select(outbox).order_by(outbox.c.id)).all(),
                    }
            except DBAPIError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def order_states(self) -> dict[int, tuple[str, str]]:
        """Order id -> (status, status class), for watching progress."""
        assert self.engine is not None
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(orders.c.id, orders.c.status,
                                              orders.c.status_class)).all()
        except DBAPIError:
            return {}
        return {row.id: (row.status, row.status_class) for row in rows}

    def unpublished(self) -> int | None:
        assert self.engine is not None
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                    .where(outbox.c.published_at.is_(None))).scalar_one()
        except DBAPIError:
            return None


def snapshot(rows: dict[str, list[Any]]) -> Snapshot:
    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows["outbox"]:
        events[row.user_id].append(orjson.loads(event_bytes(row.id, row.type, row.payload)))
    return Snapshot(
        balances={row.user_id: _money(row.balance) for row in rows["accounts"]},
        orders={row.id: OrderRow(row.id, row.user_id, row.status, row.status_class,
                                 row.remains, _money(row.charge), _money(row.refunded),
                                 row.quantity) for row in rows["orders"]},
        ledger=[LedgerRow(row.user_id, row.kind, _money(row.amount), row.order_id,
                          row.idempotency_key) for row in rows["ledger"]],
        events=dict(events),
        unpublished=sum(1 for row in rows["outbox"] if row.published_at is None),
    )


def _money(value: Any) -> Decimal:
    """A stored amount at two decimals; a value with more is kept as is, so it shows."""
    amount = Decimal(str(value))
    return amount.quantize(MONEY) if amount == amount.quantize(MONEY) else amount
