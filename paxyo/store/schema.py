"""Tables of the store (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from paxyo.store.types import ExactString, Money

# Exact money on every backend (integer units on SQLite, NUMERIC(24, 8) elsewhere).
MONEY = Money()
# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

accounts = Table(
    "accounts", metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("balance", MONEY, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

orders = Table(
    "orders", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, ForeignKey("accounts.user_id"), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("provider_order_id", String(64), nullable=False),
    Column("service", String(64), nullable=True),
    Column("link", Text, nullable=True),
    Column("quantity", BigInteger, nullable=False),
    Column("charge", MONEY, nullable=False),
    Column("refunded", MONEY, nullable=False),
    Column("status", String(32), nullable=False),
    # open | completed | partial | canceled; UNKNOWN provider words keep the order open
    Column("status_class", String(16), nullable=False),
    Column("remains", BigInteger, nullable=True),
    # the provider's last word that we could not classify (kept for review), else NULL
    Column("review_status", String(64), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("observed_at", DateTime, nullable=True),
    Column("changed_at", DateTime, nullable=False),
    Column("next_check_at", DateTime, nullable=False),
    # dispatcher lease: an order in a queued or running shard is not enqueued again
    Column("lease_until", DateTime, nullable=True),
    Column("lease_token", String(32), nullable=True),
    # only leased orders (SQLite, PostgreSQL; MySQL has no partial indexes): migration 0005
    Index("ix_orders_lease", "lease_token", sqlite_where=text("lease_token IS NOT NULL"),
          postgresql_where=text("lease_token IS NOT NULL")),
    Index("ix_orders_due", "status_class", "next_check_at"),
    Index("ix_orders_provider_due", "provider", "status_class", "next_check_at"),
    Index("ix_orders_user", "user_id"),
)

ledger_entries = Table(
    "ledger_entries", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, ForeignKey("accounts.user_id"), nullable=False),
    Column("kind", String(16), nullable=False),  # deposit | charge | refund
    Column("amount", MONEY, nullable=False),     # signed: charges are negative
    Column("idempotency_key", ExactString(191), nullable=False, unique=True),
    Column("order_id", BigInteger, nullable=True),
    Column("reference", String(191), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Index("ix_ledger_user", "user_id"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    # the event's fields as JSON, without "type" and "id" (paxyo.events.event_bytes adds them)
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("published_at", DateTime, nullable=True),
    Index("ix_outbox_unpublished", "published_at", "id"),
)

# Webhook deliveries still to make: one row per event, written in the event's own transaction
# when webhooks are on, deleted once a 2xx answers it. A user's lowest pending row is their
# cursor: only it is sent, so each user's events go out in id order.
webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),  # outbox.id
    Column("user_id", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("first_attempt_at", DateTime, nullable=True),
    Column("last_attempt_at", DateTime, nullable=True),
    Column("last_error", String(255), nullable=True),
    # the sender holding it while a POST is in flight, and until when
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Index("ix_webhook_user", "user_id", "state", "event_id"),
    Index("ix_webhook_due", "state", "next_attempt_at"),
)
