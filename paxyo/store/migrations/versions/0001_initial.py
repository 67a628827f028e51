"""Accounts, orders, ledger entries, outbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(24, 8, asdecimal=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("balance", MONEY, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("accounts.user_id"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("provider_order_id", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64)),
        sa.Column("link", sa.Text),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("charge", MONEY, nullable=False),
        sa.Column("refunded", MONEY, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_class", sa.String(16), nullable=False),
        sa.Column("remains", sa.BigInteger),
        sa.Column("review_status", sa.String(64)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("observed_at", sa.DateTime),
        sa.Column("changed_at", sa.DateTime, nullable=False),
        sa.Column("next_check_at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime),
        sa.Column("lease_token", sa.String(32)),
    )
    op.create_index("ix_orders_lease", "orders", ["lease_token"])
    op.create_index("ix_orders_due", "orders", ["status_class", "next_check_at"])
    op.create_index("ix_orders_provider_due", "orders",
                    ["provider", "status_class", "next_check_at"])
    op.create_index("ix_orders_user", "orders", ["user_id"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("accounts.user_id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("idempotency_key", sa.String(191), nullable=False, unique=True),
        sa.Column("order_id", sa.BigInteger),
        sa.Column("reference", sa.String(191)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_ledger_user", "ledger_entries", ["user_id"])
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("published_at", sa.DateTime),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "id"])


def downgrade() -> None:
    for table in ("outbox", "ledger_entries", "orders", "accounts"):
        op.drop_table(table)
