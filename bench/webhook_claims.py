"""How long the webhook sender's search for due events takes on PostgreSQL with a deep queue.

100,000 undelivered events in ``webhook_deliveries`` and three states of that queue:

- fresh: 10 events for each of 10,000 users, nothing attempted yet, everything due;
- receiver down: the same, and every user's first event failed once and waits 5 minutes;
- one user in flight: one user has 90,001 events and the first is being POSTed; 9,999 users
  have one event each.

Each state is measured twice: "before", the queue as the sender wrote it until events behind a
user's first one were marked as such (every event due from its creation, so the search reads
and rejects every event queued behind another), and "after", as ``record_event`` writes it now
(only a user's first event has a time; the others hold ``WEBHOOK_BEHIND``).

For each it prints the median time of ``claim_due`` (16 events, one sender with every chain
free) over --repeat runs, and EXPLAIN ANALYZE of its search: execution time and the rows read
by its index scan. It asserts nothing.

    python bench/webhook_claims.py [--database-url postgresql+psycopg://.../test] [--repeat 5]

A database is created beside the one named by --database-url, and dropped at the end.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from paxyo import webhook_queue
from paxyo.clock import utcnow
from paxyo.events import WEBHOOK_BEHIND
from paxyo.store.engine import open_engine
from paxyo.store.migrate import upgrade

USERS = 10_000
PER_USER = 10
LIMIT = 16


def fill(engine: sa.Engine, *, heavy: bool, behind: bool) -> None:
    """100,000 events: 10 per user, or (heavy) 90,001 of user 1 and one per other user;
    ``behind``: the events after each user's first hold WEBHOOK_BEHIND."""
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
        if behind:
            conn.execute(sa.text(
                "UPDATE webhook_deliveries d SET next_attempt_at = :behind WHERE EXISTS "
                "(SELECT 1 FROM webhook_deliveries e WHERE e.user_id = d.user_id "
                "AND e.event_id < d.event_id)"), {"behind": WEBHOOK_BEHIND})
    vacuum(engine)


def vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE webhook_deliveries")
        conn.exec_driver_sql("VACUUM ANALYZE outbox")


def fail_every_first_event(engine: sa.Engine) -> None:
    """Each user's first event failed once and is retried in 5 minutes."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE webhook_deliveries d SET attempts = 1, last_error = 'HTTP 500', "
            "first_attempt_at = now() at time zone 'utc', "
            "last_attempt_at = now() at time zone 'utc', "
            "next_attempt_at = now() at time zone 'utc' + interval '5 minutes' "
            "WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries e "
            "WHERE e.user_id = d.user_id AND e.event_id < d.event_id)")
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
    states = {
        "fresh backlog, all due": (False, []),
        "receiver down (first events in backoff)": (False, [fail_every_first_event]),
        "one user's 90,001 events, first in flight": (True, [lease_first_event_of_user_one]),
    }
    rows = []
    try:
        upgrade(url)
        engine = open_engine(url)
        for label, (heavy, steps) in states.items():
            figures = []
            for behind in (False, True):
                fill(engine, heavy=heavy, behind=behind)
                for step in steps:
                    step(engine)
                figures.append(measure(engine, args.repeat))
            rows.append((label, *figures))
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
    print(f"claim_due on PostgreSQL, {USERS * PER_USER:,} pending events, limit {LIMIT}, "
          f"median of {args.repeat}; EXPLAIN ANALYZE of its search")
    print(f"{'queue state':44} {'':7} {'claim ms':>9} {'explain ms':>11} {'rows read':>10}")
    for label, before, after in rows:
        for tag, (median, execution, scanned) in (("before", before), ("after", after)):
            print(f"{label:44} {tag:7} {median:9.1f} {execution:11.1f} {scanned:10,}")
            label = ""


if __name__ == "__main__":
    main()
