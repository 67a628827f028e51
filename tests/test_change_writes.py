"""Adversarial tests of the batched change writes (paxyo.change_writes via apply_observations).

Differential: the same orders, owned by a twin user, written by the per-change path
(:func:`write_change`, what the savepoint fallback runs) must give the same refunds, balances
and event bodies as the batch. A reply with changes the database refuses must give the other
changes of the same user exactly what they would have got without them. Concurrent appliers of
overlapping replies (one of them in the fallback path, which locks in another order) credit
each order once and every event shows the balance as of its own change.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import redis
from sqlalchemy import func, select, update

from paxyo.accounts import deposit, get_balance
from paxyo.change_writes import write_change
from paxyo.clock import utcnow
from paxyo.events import WEBHOOK_BEHIND
from paxyo.keys import Keys
from paxyo.ledger import ledger_mismatches
from paxyo.observations import apply_observations
from paxyo.orders import NewOrder, place_order
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.statuses import normalise_status
from paxyo.store.engine import transactional
from paxyo.store.schema import ledger_entries, orders, outbox, webhook_deliveries
from providers.replies import StatusEntry

D = Decimal

# (quantity, charge, stored status, stored refunded, reply status, reply remains, refund)
# Orders stored open with a refund already (written before the terminal rule, or by hand)
# exercise top-ups: a later Partial after an earlier one, a target below what was refunded,
# a refunded total above the charge.
CASES = [
    (1000, "10.00", None, "0", "Canceled", 1000, "10.00"),
    (1000, "10.00", None, "0", "Partial", 700, "7.00"),
    (1000, "10.00", "In progress", "3.00", "Partial", 700, "4.00"),   # top-up after Partial
    (1000, "10.00", "In progress", "7.00", "Partial", 250, "0.00"),   # target below refunded
    (1000, "10.00", "In progress", "12.00", "Canceled", 0, "0.00"),  # never above the charge
    (3, "10.00", None, "0", "Partial", 1, "3.33"),                     # rounded down
    (1000, "10.00", None, "0", "In progress", 900, "0.00"),
    (1000, "10.00", "Processing", "9.99", "Canceled", 0, "0.01"),
    (1000, "0.07", None, "0", "Partial", 999, "0.06"),
    (1000, "10.00", None, "0", "Partial", -5, "0.00"),
    (1000, "10.00", None, "0", "Partial", 5000, "10.00"),
    (1000, "10.00", None, "0", "Completed", 0, "0.00"),
    (1000, "10.00", "In progress", "2.00", "Partial", 700, "5.00"),   # second top-up, same user
]
SEED = D("500.00")


def seed_user(engine, user: int, first_id: int, cases=CASES) -> list[int]:
    """The user's orders for ``cases`` (ids from ``first_id``), stored as each case says."""
    deposit(engine, user, SEED, f"seed-{user}", 2)
    ids = []
    for n, (quantity, charge, status, refunded, *_rest) in enumerate(cases):
        oid = first_id + n
        place_order(engine, NewOrder(oid, user, "sim", str(oid), max(quantity, 1), D(charge)),
                    decimals=2, poll_interval=30)
        values = {"quantity": quantity, "refunded": D(refunded)}
        if status is not None:
            values.update(status=status, status_class="open")
        with engine.begin() as conn:
            conn.execute(update(orders).where(orders.c.id == oid).values(**values))
        ids.append(oid)
    return ids


def reply_for(ids, cases=CASES) -> dict[str, StatusEntry]:
    return {str(oid): StatusEntry(case[4], case[5], None, None)
            for oid, case in zip(ids, cases, strict=True)}


def apply(engine, replies, ids, observed_at=None, webhook=False):
    return apply_observations(engine, "sim", ids, replies, observed_at=observed_at or utcnow(),
                              decimals=2, poll_interval=30, webhook=webhook)


def bodies(engine, user: int, after_id: int = 0) -> list[dict]:
    """The user's order events after ``after_id``, in id order, without order/user ids."""
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.payload).where(
            outbox.c.user_id == user, outbox.c.id > after_id, outbox.c.type == "order.updated")
            .order_by(outbox.c.id)).all()
    out = []
    for (payload,) in rows:
        body = orjson.loads(payload)
        for key in ("order_id", "user_id", "at"):
            body.pop(key)
        out.append(body)
    return out


def max_outbox_id(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(func.max(outbox.c.id), 0))).scalar_one()


def assert_event_chain(engine, users, after_id: int) -> None:
    """Each user's order events after ``after_id`` show the balance as of their own change:
    each balance is the one before plus its refund, ending at the stored balance."""
    for user in users:
        with engine.connect() as conn:
            before = conn.execute(select(func.sum(ledger_entries.c.amount)).where(
                ledger_entries.c.user_id == user, ledger_entries.c.kind != "refund")).scalar()
        running = D(before).quantize(D("0.01"))
        for body in bodies(engine, user, after_id):
            running += D(body["refund"])
            assert D(body["balance"]) == running, (user, body)
        assert get_balance(engine, user) == running


def refunds_by_order(engine) -> dict[int, list[Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(select(ledger_entries.c.order_id, ledger_entries.c.amount)
                            .where(ledger_entries.c.kind == "refund")).all()
    out: dict[int, list[Decimal]] = {}
    for oid, amount in rows:
        out.setdefault(oid, []).append(D(amount))
    return out


def test_batch_writes_what_the_per_change_path_writes(any_engine):
    """One reply, one user, thirteen changes with top-ups: the batch and the per-change path
    (on a twin user with the same orders) agree on every refund, balance and event."""
    batch_ids = seed_user(any_engine, 7, 1)
    alone_ids = seed_user(any_engine, 8, 101)
    start = max_outbox_id(any_engine)
    report = apply(any_engine, reply_for(batch_ids), batch_ids)
    assert report.rejected == 0 and len(report.changes) == len(CASES)
    assert [c.refund for c in report.changes] == [D(case[6]) for case in CASES]
    observed_at = utcnow()

    def alone(conn):
        for oid, case in zip(alone_ids, CASES, strict=True):
            assert write_change(conn, oid, normalise_status(case[4]), case[5],
                                observed_at=observed_at, decimals=2, poll_interval=30,
                                webhook=False) is not None

    transactional(any_engine, alone)
    assert bodies(any_engine, 7, start) == bodies(any_engine, 8, start)
    assert get_balance(any_engine, 7) == get_balance(any_engine, 8) == (
        SEED - sum(D(c[1]) for c in CASES) + sum(D(c[6]) for c in CASES))
    assert_event_chain(any_engine, [7, 8], start)
    ids = [c.event.outbox_id for c in report.changes]
    assert ids == sorted(ids)
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        stored = {r.id: D(r.refunded) for r in conn.execute(select(orders.c.id, orders.c.refunded))}
    for oid, case in zip(batch_ids, CASES, strict=True):
        want = max(D(case[3]), D(case[3]) + D(case[6]))
        assert stored[oid] == stored[oid + 100] == want
    # exactly once: the same reply again (later) changes nothing
    assert apply(any_engine, reply_for(batch_ids), batch_ids).changes == []
    assert all(len(v) == 1 for v in refunds_by_order(any_engine).values())


def _huge_charge(engine) -> Decimal:
    """A charge the column holds whose refund no balance column can hold on top of 500.00."""
    if engine.dialect.name == "sqlite":
        return D("92233720368.00")  # 10^-8 units in a signed 64-bit integer
    return D("9999999999999999.00")  # NUMERIC(24, 8)


@pytest.mark.parametrize("webhook", [False, True])
def test_refused_changes_leave_the_same_users_other_changes_as_if_absent(any_engine, webhook):
    """User 7's reply also holds two changes the store refuses (a stored quantity 0, a refund
    that overflows the balance column), between good ones; user 8 has the same good orders
    and no bad ones. The fallback must give user 7 exactly what the batch gives user 8."""
    cases = list(CASES)
    bad_ids = []
    batch_ids = seed_user(any_engine, 8, 101)
    ids = seed_user(any_engine, 7, 10)
    # two more orders of user 7, one sorting before its good ones and one after
    for oid, quantity, charge, word in ((5, 0, D("10.00"), "Partial"),
                                        (51, 1000, _huge_charge(any_engine), "Canceled")):
        place_order(any_engine, NewOrder(oid, 7, "sim", str(oid), 1000, D("1.00")), decimals=2,
                    poll_interval=30)
        with any_engine.begin() as conn:
            conn.execute(update(orders).where(orders.c.id == oid)
                         .values(quantity=quantity, charge=charge))
        bad_ids.append((oid, word))
    deposit(any_engine, 7, D("2.00"), "for-the-bad-ones", 2)  # both users now hold the same
    start = max_outbox_id(any_engine)
    replies = reply_for(ids, cases)
    for oid, word in bad_ids:
        replies[str(oid)] = StatusEntry(word, 5, None, None)
    report = apply(any_engine, replies, ids + [oid for oid, _ in bad_ids], webhook=webhook)
    assert report.rejected == 2, report
    assert len(report.changes) == len(cases)
    twin = apply(any_engine, reply_for(batch_ids, cases), batch_ids, webhook=webhook)
    assert twin.rejected == 0 and len(twin.changes) == len(cases)
    assert bodies(any_engine, 7, start) == bodies(any_engine, 8, start)
    assert get_balance(any_engine, 7) == get_balance(any_engine, 8)
    assert_event_chain(any_engine, [7, 8], start)
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        left = {r.id: r for r in conn.execute(select(orders).where(orders.c.id.in_([5, 51])))}
    assert all(r.status == "Pending" and D(r.refunded) == 0 for r in left.values())
    assert all(r.observed_at is not None for r in left.values())  # rescheduled, not stuck
    assert 5 not in refunds_by_order(any_engine) and 51 not in refunds_by_order(any_engine)
    if webhook:
        assert_webhook_queue(any_engine, [7, 8])


def assert_webhook_queue(engine, users) -> None:
    """Each user's first pending webhook row is due, every later one waits behind it."""
    with engine.connect() as conn:
        rows = conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.event_id))
        by_user: dict[int, list] = {}
        for row in rows:
            by_user.setdefault(row.user_id, []).append(row)
        events = {r.id: r.user_id for r in conn.execute(select(outbox.c.id, outbox.c.user_id))}
    for user in users:
        queued = by_user[user]
        assert all(events[r.event_id] == user for r in queued)
        assert queued[0].next_attempt_at < WEBHOOK_BEHIND
        assert all(r.next_attempt_at == WEBHOOK_BEHIND for r in queued[1:]), user


def test_webhooks_of_many_events_of_one_user_in_one_reply(any_engine):
    """Only each user's first queued event is due; the rest wait behind it, in id order."""
    deposit(any_engine, 7, SEED, "seed-7", 2, webhook=False)
    deposit(any_engine, 9, SEED, "seed-9", 2, webhook=False)
    ids = []
    for oid in range(1, 13):
        place_order(any_engine, NewOrder(oid, 7 if oid % 3 else 9, "sim", str(oid), 1000,
                                         D("10.00")), decimals=2, poll_interval=30)
        ids.append(oid)
    replies = {str(oid): StatusEntry("Canceled" if oid % 2 else "In progress", 900, None, None)
               for oid in ids}
    report = apply(any_engine, replies, ids, webhook=True)
    assert len(report.changes) == 12
    assert_webhook_queue(any_engine, [7, 9])
    with any_engine.connect() as conn:
        queued = conn.execute(select(func.count()).select_from(webhook_deliveries)).scalar_one()
    assert queued == 12


def test_without_returning_events_are_inserted_one_by_one_in_order(any_engine, monkeypatch):
    """MySQL without RETURNING: record_events falls back to an INSERT per event; the ids,
    balances and webhook queue come out as with RETURNING."""
    monkeypatch.setattr(any_engine.dialect,
                        "insert_executemany_returning_sort_by_parameter_order", False)
    ids = seed_user(any_engine, 7, 1)
    start = max_outbox_id(any_engine)
    report = apply(any_engine, reply_for(ids), ids, webhook=True)
    assert len(report.changes) == len(CASES)
    event_ids = [c.event.outbox_id for c in report.changes]
    assert event_ids == sorted(event_ids)
    assert [b["refund"] for b in bodies(any_engine, 7, start)] == [c[6] for c in CASES]
    assert_event_chain(any_engine, [7], start)
    with any_engine.connect() as conn:
        queued = conn.execute(select(webhook_deliveries).where(
            webhook_deliveries.c.event_id > start).order_by(webhook_deliveries.c.event_id)).all()
    assert [r.event_id for r in queued] == event_ids
    assert queued[0].next_attempt_at < WEBHOOK_BEHIND
    assert all(r.next_attempt_at == WEBHOOK_BEHIND for r in queued[1:])


def test_a_users_events_of_one_reply_reach_redis_in_id_order(any_engine, redis_url,
                                                              redis_prefix):
    ids_7 = seed_user(any_engine, 7, 1)
    ids_8 = seed_user(any_engine, 8, 101)
    start = max_outbox_id(any_engine)
    report = apply(any_engine, {**reply_for(ids_7), **reply_for(ids_8)}, ids_7 + ids_8)
    client = redis.Redis.from_url(redis_url)
    relay = OutboxRelay(any_engine, client, RelayConfig(Keys(redis_prefix)))
    # publish the reply's events from the last one first: each user's earlier events go first
    relay.publish_ids([c.event.outbox_id for c in reversed(report.changes)])
    relay.sweep(older_than=0)
    stream = [(int(e[b"u"]), int(e[b"i"]), orjson.loads(e[b"d"]))
              for _, e in client.xrange(Keys(redis_prefix).events)]
    for user in (7, 8):
        mine = [(i, body) for u, i, body in stream if u == user and i > start]
        assert [i for i, _ in mine] == sorted(i for i, _ in mine)
        assert [b["refund"] for _, b in mine] == [c[6] for c in CASES]
        history = [int(s) for _, s in client.zrange(Keys(redis_prefix).history(user), 0, -1,
                                                     withscores=True)]
        assert history == sorted(history)


# --- concurrent appliers ----------------------------------------------------------------------

USERS = (3, 4, 5, 6)
ROUND_ORDERS = 40


def _race_round(engine, first_id: int, observed_at) -> tuple[list, list[BaseException]]:
    """Two appliers of overlapping replies at once: A answers orders [0, 30), B [10, 40) plus
    an order with stored quantity 0 (so B's batch fails and B falls back to its per-change
    savepoints, which lock order, account, order, account... rather than all orders first)."""
    ids = list(range(first_id, first_id + ROUND_ORDERS))
    bad = first_id + ROUND_ORDERS
    a_ids, b_ids = ids[:30], [*ids[10:], bad]

    def answer(oid, variant):
        k = oid - first_id
        if k % 3 == 0:
            return StatusEntry("Canceled", 0, None, None)
        if k % 3 == 1:  # the two appliers disagree: whichever comes first wins, once
            return StatusEntry("Partial", 700 if variant else 250, None, None)
        return StatusEntry("In progress", 900, None, None)

    replies_a = {str(oid): answer(oid, 0) for oid in a_ids}
    replies_b = {str(oid): answer(oid, 1) for oid in ids[10:]}
    replies_b[str(bad)] = StatusEntry("Partial", 5, None, None)
    barrier = threading.Barrier(2)
    reports, failures = [], []

    def run(which, order_ids, replies):
        try:
            barrier.wait()
            reports.append((which, apply(engine, replies, order_ids, observed_at=observed_at)))
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=run, args=("a", a_ids, replies_a)),
               threading.Thread(target=run, args=("b", b_ids, replies_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return reports, failures


@pytest.mark.slow
def test_overlapping_replies_applied_at_once_credit_each_order_once(any_engine):
    for user in USERS:
        deposit(any_engine, user, D("10000.00"), f"seed-{user}", 2)
    rounds = 6
    for r in range(rounds):
        first = 1 + r * 100
        for oid in range(first, first + ROUND_ORDERS + 1):
            place_order(any_engine, NewOrder(oid, USERS[(oid * 7) % len(USERS)], "sim",
                                             str(oid), 1000, D("10.00")),
                        decimals=2, poll_interval=30)
        with any_engine.begin() as conn:
            conn.execute(update(orders).where(orders.c.id == first + ROUND_ORDERS)
                         .values(quantity=0))
    start = max_outbox_id(any_engine)
    for r in range(rounds):
        first = 1 + r * 100
        reports, failures = _race_round(any_engine, first, utcnow() - timedelta(seconds=1))
        assert failures == []
        assert sum(r.rejected for _, r in reports) == 1
        changed = sorted(c.order_id for _, rep in reports for c in rep.changes)
        assert changed == list(range(first, first + ROUND_ORDERS))  # each once, by A or B
    refunds = refunds_by_order(any_engine)
    assert all(len(v) == 1 for v in refunds.values()), refunds
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        for row in conn.execute(select(orders.c.id, orders.c.refunded)):
            assert D(row.refunded) == sum(refunds.get(row.id, [D(0)]))
    assert_event_chain(any_engine, USERS, start)


@pytest.mark.parametrize("any_database_url", ["postgresql", "mysql"], indirect=True)
def test_a_deadlock_in_the_fallback_path_is_retried_not_set_aside(any_engine):
    """The per-change fallback (a reply with a change that fails) deadlocks with another
    transaction and is chosen as the victim. The deadlock must be retried like any other, and
    the report must list only changes that committed.

    On MariaDB/MySQL a deadlock rolls back the whole transaction, savepoints included, so the
    ROLLBACK TO SAVEPOINT that follows fails with 1305 (savepoint does not exist). Before the
    fix the change was then set aside as refused and the transaction went on, reporting the
    changes made before the deadlock although InnoDB had rolled them back.
    """
    from paxyo.store.schema import accounts

    for user in (1, 2, 3):
        deposit(any_engine, user, D("1000.00"), f"seed-{user}", 2)
    for oid, user in ((1, 2), (2, 1), (3, 1)):
        place_order(any_engine, NewOrder(oid, user, "sim", str(oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    for oid in range(10, 70):  # the other transaction's weight: InnoDB's victim is the lighter
        place_order(any_engine, NewOrder(oid, 3, "sim", str(oid), 1000, D("1.00")),
                    decimals=2, poll_interval=30)
    with any_engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.id == 3).values(quantity=0))
    holding, results = threading.Event(), {}

    def other() -> None:  # locks account 2, then account 1 once the applier holds it
        try:
            with any_engine.connect() as conn, conn.begin():
                for _ in range(20):  # heavy: many undo records
                    conn.execute(update(orders).where(orders.c.user_id == 3)
                                 .values(updated_at=utcnow(), remains=orders.c.remains + 1))
                conn.execute(select(accounts).where(accounts.c.user_id == 2).with_for_update())
                holding.set()
                time.sleep(0.5)
                conn.execute(select(accounts).where(accounts.c.user_id == 1).with_for_update())
            results["other"] = "committed"
        except Exception as exc:
            results["other"] = exc

    thread = threading.Thread(target=other)
    thread.start()
    holding.wait(10)
    # pending sorted by user: order 2 (user 1), order 3 (user 1, fails), order 1 (user 2)
    replies = {str(oid): StatusEntry("Canceled" if oid != 3 else "Partial", 5, None, None)
               for oid in (1, 2, 3)}
    report = apply(any_engine, replies, [1, 2, 3])
    thread.join(30)
    assert results["other"] == "committed", results  # the applier was the deadlock's victim
    with any_engine.connect() as conn:
        stored = {r.id: r for r in conn.execute(select(orders).where(orders.c.id.in_([1, 2, 3])))}
        assert ledger_mismatches(conn) == []
    for change in report.changes:  # the report tells only what committed
        assert stored[change.order_id].status == change.status, (change, report)
    assert sorted(c.order_id for c in report.changes) == [1, 2]
    assert report.rejected == 1
    assert stored[1].status == stored[2].status == "Canceled"
    assert get_balance(any_engine, 1) == D("1000.00") - 20 + 10
