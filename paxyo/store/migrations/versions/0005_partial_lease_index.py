"""Index only leased orders by lease token (SQLite, PostgreSQL).

Every check leases an order and ends the lease again. With a full index on ``lease_token``,
each of the two writes moves the order's entry between the token and the NULL that nearly
every order holds: four index writes per check, in an index as large as the table. A partial
index on the orders that hold a lease takes one insert and one delete, and stays as small as
the shards in flight. Every query on the column names a token, which implies NOT NULL, so the
partial index serves them all. MySQL and MariaDB have no partial indexes: theirs stays whole.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        return
    op.drop_index("ix_orders_lease", table_name="orders")
    op.create_index("ix_orders_lease", "orders", ["lease_token"],
                    sqlite_where=sa.text("lease_token IS NOT NULL"),
                    postgresql_where=sa.text("lease_token IS NOT NULL"))


def downgrade() -> None:
    if op.get_bind().dialect.name not in ("sqlite", "postgresql"):
        return
    op.drop_index("ix_orders_lease", table_name="orders")
    op.create_index("ix_orders_lease", "orders", ["lease_token"])
