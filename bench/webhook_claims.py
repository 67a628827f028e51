"""How long the webhook sender's search for due events takes on PostgreSQL with a deep queue.

100,000 undelivered events of 10,000 users (10 each) in ``webhook_deliveries``, and three
states of that queue:

- fresh: nothing attempted yet, everything due;
- receiver down: every user's first event failed once and waits 5 minutes. "before" is the
  queue as the sender left it until the successors were moved (the users' later events still
  due, so the search reads and rejects all 90,000 of them); "after" is the queue as
  ``mark_attempt_failed`` leaves it now (the later events wait with the first);
- one user in flight: one user has 90,001 events and the first is being POSTed; 9,999 users
  have one event each. Not changed by the fix: figures only.

For each it prints the median time of ``claim_due`` (16 events, as one sender with every chain
free) over --repeat runs and EXPLAIN ANALYZE of its search (execution time, rows read by the
outer index scan). It asserts nothing.

    python bench/webhook_claims.py [--database-url postgresql+psycopg://...] [--repeat 5]

The database named by --database-url is created and dropped; the server's admin URL is used to
do that.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from paxyo import webhook_queue
from paxyo.clock import utcnow
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade

USERS = 10_000
PER_USER = 10
LIMIT = 16


def fill(engine: sa.Engine, heavy: bool) -> None:
    """100,000 events: 10 per user, or (heavy) 90,001 of user 1 and one per other user."""
    user = ("CASE WHEN g <= 90001 THEN 1 ELSE g - 90000 END" if heavy
            else f"(g %% {USERS}) + 1")
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE outbox, webhook_deliveries")
        conn.exec_driver_sql(
            "INSERT INTO outbox (id, user_id, type, payload, created_at) "
            f"SELECT g, {user}, 'balance.updated', '{{}}'::bytea, "
            "now() at time zone 'utc' - interval '2 hour' + g * interval '10 ms' "
            f"FROM generate_series(1, {USERS * PER_USER}) g")
        conn.exec_driver_sql(
            "INSERT INTO webhook_deliveries (event_id, user_id, state, attempts, "
            "next_attempt_at) SELECT id, user_id, 'pending', 0, created_at FROM outbox")
    vacuum(engine)


def vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE webhook_deliveries")
        conn.exec_driver_sql("VACUUM ANALYZE outbox")


def fail_every_first_event(engine: sa.Engine) -> None:
    """Each user's first event: claimed, then failed with a retry in 5 minutes (real calls)."""
    claimed = webhook_queue.claim_due(engine, "bench", lease_seconds=60, limit=USERS)
    now = utcnow()
    for delivery in claimed:
        webhook_queue.mark_attempt_failed(engine, delivery, "bench", error="HTTP 500", now=now,
                                          retry_at=now + timedelta(minutes=5))
    vacuum(engine)


def successors_due_again(engine: sa.Engine) -> None:
    """The queue as the sender left it before: later events keep their creation time."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE webhook_deliveries d SET next_attempt_at = o.created_at FROM outbox o "
            "WHERE o.id = d.event_id AND d.attempts = 0")
    vacuum(engine)


def lease_first_event_of_user_one(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE webhook_deliveries SET lease_owner = 'other', "
                             "lease_until = now() at time zone 'utc' + interval '1 hour' "
                             "WHERE event_id = 1")
    vacuum(engine)


def measure(engine: sa.Engine, repeat: int) -> tuple[float, float, int]:
    """Median claim_due ms; EXPLAIN ANALYZE ms and rows read by the outer scan."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        claimed = webhook_queue.claim_due(engine, "bench", lease_seconds=60, limit=LIMIT)
        times.append((time.perf_counter() - start) * 1000)
        webhook_queue.release(engine, [d.event_id for d in claimed], "bench")
    sql = str(webhook_queue.due_heads(utcnow(), LIMIT).compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN ANALYZE {sql}"))
    execution = float(re.search(r"Execution Time: ([\d.]+) ms", plan).group(1))
    scans = re.findall(r"Index Scan using ix_webhook_due on webhook_deliveries .*?"
                       r"actual time=[\d.]+\.\.[\d.]+ rows=(\d+)", plan)
    return statistics.median(times), execution, int(scans[0]) if scans else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    name = f"paxyo_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        engine = open_engine(url)
        rows = []
        fill(engine, heavy=False)
        rows.append(("fresh backlog, all due", measure(engine, args.repeat), None))
        fail_every_first_event(engine)
        after = measure(engine, args.repeat)
        successors_due_again(engine)
        rows.append(("receiver down (first events in backoff)",
                     measure(engine, args.repeat), after))
        fill(engine, heavy=True)
        lease_first_event_of_user_one(engine)
        rows.append(("one user's 90,001 events, first in flight",
                     measure(engine, args.repeat), None))
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
    print(f"claim_due on PostgreSQL, {USERS * PER_USER:,} pending events, limit {LIMIT}, "
          f"median of {args.repeat}; EXPLAIN ANALYZE of its search")
    print(f"{'queue state':44} {'':7} {'claim ms':>9} {'explain ms':>11} {'rows read':>10}")
    for label, before, after in rows:
        for tag, figures in (("before", before), ("after", after)):
            if figures is None:
                continue
            median, execution, scanned = figures
            shown_tag = tag if after is not None else "(same)"
            print(f"{label:44} {shown_tag:7} {median:9.1f} {execution:11.1f} {scanned:10,}")
            label = ""


if __name__ == "__main__":
    main()
