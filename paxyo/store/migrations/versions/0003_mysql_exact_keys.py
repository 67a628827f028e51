"""MySQL and MariaDB: idempotency keys compared byte for byte.

Their default collation (utf8mb4_general_ci) is case- and accent-insensitive and pads with
spaces, so deposits with the references "abc" and "ABC" shared one idempotency key and the
second was taken for a repeat of the first. VARBINARY compares bytes; the unique index stays.
Other stores compare strings exactly already.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute("ALTER TABLE ledger_entries MODIFY idempotency_key VARBINARY(764) NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute("ALTER TABLE ledger_entries MODIFY idempotency_key "
                   "VARCHAR(191) CHARACTER SET utf8mb4 NOT NULL")
