"""SQLite: money as integer units of 10^-8 instead of floats.

Before this revision SQLite stored NUMERIC(24, 8) money through its NUMERIC affinity, as an
8-byte float for any amount with a fraction, which loses cents above about 10^8
(116148470.32 read back as 116148470.31999999). Each stored value is read back through its
shortest repr (the decimal it was written from, for any amount of up to 15 significant
digits), rounded to 8 decimals and rewritten as an exact integer count of 10^-8 units
(see paxyo.store.types.Money). PostgreSQL and MySQL store NUMERIC exactly: nothing to do.

Revision ID: 0002
Revises: 0001
"""

from decimal import Decimal

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MONEY_COLUMNS = (("accounts", "balance"), ("orders", "charge"), ("orders", "refunded"),
                 ("ledger_entries", "amount"))
SCALE = Decimal(10) ** 8
BATCH = 5000


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, column in MONEY_COLUMNS:
            _rewrite(table, column, _to_units)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, column in MONEY_COLUMNS:
            _rewrite(table, column, lambda units: float(Decimal(units) / SCALE))


def _to_units(stored: float | int) -> int:
    return int((Decimal(repr(stored)) * SCALE).quantize(Decimal(1)))


def _rewrite(table: str, column: str, convert) -> None:  # type: ignore[no-untyped-def]
    conn = op.get_bind()
    last = -(2**63)
    while True:
        rows = conn.exec_driver_sql(
            f"SELECT rowid, {column} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (last, BATCH)).all()
        if not rows:
            return
        conn.exec_driver_sql(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                             [(convert(value), rowid) for rowid, value in rows])
        last = rows[-1][0]
