"""Applying provider replies: one bad entry is set aside and never holds up the others."""

import json
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import select, update

from dispatcher.planner import plan_shards
from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.ledger import ledger_mismatches
from paxyo.observations import apply_observations
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.store.schema import orders, outbox
from providers.replies import StatusEntry, parse_multi_status, parse_remains

D = Decimal


def seed(engine, count, user=111):
    deposit(engine, user, D("10.00") * count, f"seed-{user}", 2)
    for oid in range(1, count + 1):
        place_order(engine, NewOrder(oid, user, "sim", str(7000 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)


def apply(engine, replies, ids):
    return apply_observations(engine, "sim", ids, replies, observed_at=utcnow(), decimals=2,
                              poll_interval=30)


@pytest.mark.parametrize("value", ["1e30", "1e400", 10**30, -(10**30), "1E19", 2**63,
                                   "1000000000000001", "\u00b2", "1\u00b2", "12\x003",
                                   "\uff19", "\u0663", "1_000", "NaN", "Infinity", "1e-5", "\x00"])
def test_remains_out_of_range_or_not_ascii_is_no_number(value):
    assert parse_remains(value) is None


@pytest.mark.parametrize("value, expected", [("157", 157), (157, 157), ("157.0", 157),
                                             ("-5", -5), (" 42 ", 42), ("0", 0),
                                             ("999999999999999", 10**15 - 1),
                                             ("1000000000000000", 10**15), ("007", 7)])
def test_remains_within_range_are_read(value, expected):
    assert parse_remains(value) == expected


def test_a_huge_remains_in_the_reply_never_rolls_back_the_others(any_engine):
    seed(any_engine, 40)
    body = {str(7000 + oid): {"status": "Canceled", "remains": "0"} for oid in range(1, 41)}
    body["7001"] = {"status": "Partial", "remains": "1e30"}
    body["7002"] = {"status": "Partial", "remains": 10**30}
    body["7003"] = {"status": "In progress", "remains": "1e400"}
    replies = parse_multi_status(_dumps(body), [str(7000 + o) for o in range(1, 41)])
    report = apply(any_engine, replies, range(1, 41))
    assert len(report.changes) == 37 + 1  # 37 canceled, order 3 moves to In progress
    assert report.bad_remains == 2
    assert get_order(any_engine, 1, 2)["status"] == "Pending"
    assert get_order(any_engine, 3, 2)["status"] == "In progress"
    assert get_order(any_engine, 3, 2)["remains"] == 1000  # kept: no usable number
    assert get_balance(any_engine, 111) == D("370.00")
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def _dumps(body) -> bytes:
    """JSON with integers past 64 bits, which orjson refuses to write (PHP panels do not)."""
    return json.dumps(body).encode()


def test_a_change_that_fails_is_set_aside_and_the_rest_commit(any_engine):
    seed(any_engine, 10)
    with any_engine.begin() as conn:  # stored before quantities were checked at the door
        conn.execute(update(orders).where(orders.c.id == 6).values(quantity=0))
    replies = {str(7000 + oid): StatusEntry("Canceled", 0, None, None) for oid in range(1, 11)}
    # past every parser: a value no BIGINT column holds, and a NUL no PostgreSQL text holds
    replies["7004"] = StatusEntry("Partial", 10**30, None, None)
    replies["7005"] = StatusEntry("Awaiting\x00 review", 5, None, None)
    replies["7006"] = StatusEntry("Partial", 5, None, None)  # refund divides by quantity 0
    report = apply(any_engine, replies, range(1, 11))
    assert sorted(c.order_id for c in report.changes) == [1, 2, 3, 7, 8, 9, 10]
    assert (report.bad_remains, report.unknown, report.rejected) == (1, 1, 1)
    assert get_order(any_engine, 4, 2)["status"] == "Pending"
    assert get_order(any_engine, 5, 2)["provider_status"] == "Awaiting? review"
    assert get_order(any_engine, 6, 2)["status"] == "Pending"
    assert get_order(any_engine, 6, 2)["checked_at"] is not None  # rescheduled, not stuck
    assert get_balance(any_engine, 111) == D("70.00")
    with any_engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def test_a_stored_id_with_commas_is_never_sent_and_the_call_carries_at_most_100_ids(
        queued_settings, engine, simulator):
    from monitoring.metrics import process_metrics
    from workers.context import build_context
    from workers.jobs import run_shard

    seed(engine, 100)
    with engine.begin() as conn:  # stored before ids were checked at the door
        conn.execute(update(orders).where(orders.c.id == 1)
                     .values(provider_order_id="1,2,3,4,5"))
        conn.execute(update(orders).where(orders.c.id == 2)
                     .values(provider_order_id="7003"))  # two orders, one provider id
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))
    for oid in range(2, 101):
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    [shard] = plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)
    ctx = build_context(queued_settings, process_metrics())
    try:
        result = run_shard(ctx, "sim", shard.order_ids, shard.token)
    finally:
        ctx.close()
    stats = simulator.stats()
    assert stats["status_requests"] == 1 and stats["orders_queried"] == 98
    assert result["changed"] == 99
    bad = get_order(engine, 1, 2)
    assert bad["status"] == "Pending" and bad["provider_status"] == "invalid provider order id"
    assert get_balance(engine, 111) == D("990.00")


@pytest.fixture
def queued_settings(settings, redis_prefix):
    return settings.with_overrides(queue_name=f"{redis_prefix}-q")


def test_one_reply_with_many_changes_of_two_users_writes_each_event_in_order(any_engine):
    """The batched writes: each user's events get ascending ids, each showing the balance as
    of its own change, and the users' ledgers still add up."""
    deposit(any_engine, 5, D("100.00"), "seed-5", 2)
    deposit(any_engine, 3, D("100.00"), "seed-3", 2)
    for oid in range(1, 9):
        place_order(any_engine, NewOrder(oid, 5 if oid % 2 else 3, "sim", str(7000 + oid),
                                         1000, D("10.00")), decimals=2, poll_interval=30)
    replies = {str(7000 + oid): StatusEntry("Canceled", 1000, None, None) for oid in (1, 2, 3)}
    replies["7004"] = StatusEntry("Partial", 250, None, None)
    replies["7005"] = StatusEntry("In progress", 900, None, None)  # changes, refunds nothing
    replies["7007"] = StatusEntry("Partial", 100, None, None)
    report = apply(any_engine, replies, range(1, 9))
    assert len(report.changes) == 6
    with any_engine.connect() as conn:
        rows = conn.execute(select(outbox).where(outbox.c.type == "order.updated")
                            .order_by(outbox.c.id)).all()
        assert ledger_mismatches(conn) == []
    by_user: dict[int, list[tuple[int, str, str]]] = {}
    for row in rows[-6:]:
        body = orjson.loads(row.payload)
        by_user.setdefault(body["user_id"], []).append(
            (body["order_id"], body["refund"], body["balance"]))
    # user 5 (orders 1, 3, 5, 7) had 60.00 left after four charges; user 3 (2, 4) 60.00
    assert by_user[5] == [(1, "10.00", "70.00"), (3, "10.00", "80.00"), (5, "0.00", "80.00"),
                          (7, "1.00", "81.00")]
    assert by_user[3] == [(2, "10.00", "70.00"), (4, "2.50", "72.50")]
    assert get_balance(any_engine, 5) == D("81.00") and get_balance(any_engine, 3) == D("72.50")
    assert [c.event.outbox_id for c in report.changes] == sorted(
        c.event.outbox_id for c in report.changes)
    assert apply(any_engine, replies, range(1, 9)).changes == []  # exactly once


def test_orders_of_different_ages_are_each_rescheduled_by_their_own_age(any_engine):
    seed(any_engine, 6)
    now = utcnow()
    ages = {1: 3600, 2: 3600, 3: 20, 4: 40, 5: 3600, 6: 40}  # seconds since the last change
    with any_engine.begin() as conn:
        for oid, age in ages.items():
            conn.execute(update(orders).where(orders.c.id == oid)
                         .values(changed_at=now - timedelta(seconds=age)))
    replies = {str(7000 + oid): StatusEntry("Pending", 1000, None, None) for oid in range(1, 7)}
    replies["7002"] = StatusEntry("Fail", None, None, None)  # unknown: kept for review
    del replies["7005"]  # no answer
    report = apply(any_engine, replies, range(1, 7))
    assert (report.unchanged, report.unknown, report.no_answer) == (4, 1, 1)
    with any_engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(orders))}
    delay = {oid: (rows[oid].next_check_at - rows[oid].observed_at).total_seconds()
             for oid in ages}
    # half the unchanged time, between 7.5 s and 28 s (poll interval 30); MySQL keeps whole
    # seconds
    assert delay[1] == delay[2] == delay[5] == pytest.approx(28, abs=1)
    assert delay[3] == pytest.approx(10, abs=1)
    assert delay[4] == delay[6] == pytest.approx(20, abs=1)
    assert rows[2].review_status == "Fail" and rows[1].review_status is None
    assert all(rows[oid].observed_at is not None for oid in ages)


def test_a_workers_check_ends_its_own_leases_and_no_other(any_engine, monkeypatch):
    """The statements that write a checked order also end its lease (on every database,
    whatever order it evaluates SET in); an order leased under another token keeps it, and
    the release at the end frees what no statement wrote."""
    from paxyo import observations
    from paxyo.leases import lease, release
    from paxyo.store.engine import transactional

    monkeypatch.setattr(observations, "release", lambda conn, token: None)

    seed(any_engine, 5)
    now = utcnow()
    until = now + timedelta(seconds=120)
    mine, _ = transactional(any_engine, lambda conn: lease(conn, [1, 2, 3, 5], now, until))
    theirs, _ = transactional(any_engine, lambda conn: lease(conn, [4], now, until))
    with any_engine.begin() as conn:  # order 5 was closed meanwhile: not written, still freed
        conn.execute(update(orders).where(orders.c.id == 5).values(status_class="canceled"))
    replies = {"7001": StatusEntry("Canceled", 0, None, None),        # a change
               "7002": StatusEntry("Pending", 1000, None, None),      # nothing new
               "7004": StatusEntry("Canceled", 0, None, None)}        # 7003: no answer
    report = apply_observations(any_engine, "sim", range(1, 6), replies, observed_at=utcnow(),
                                decimals=2, poll_interval=30, lease_token=mine)
    assert [c.order_id for c in report.changes] == [1, 4]
    with any_engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(orders))}
    for oid in (1, 2, 3):  # ended by the statements that wrote them
        assert (rows[oid].lease_token, rows[oid].lease_until) == (None, None), oid
    assert rows[4].lease_token == theirs and rows[4].lease_until is not None
    assert rows[4].status == "Canceled"  # checked all the same; its own holder ends its lease
    assert rows[5].lease_token == mine  # not written: left to the release at the end
    transactional(any_engine, lambda conn: release(conn, mine))
    with any_engine.connect() as conn:
        row = conn.execute(select(orders).where(orders.c.id == 5)).one()
    assert (row.lease_token, row.lease_until) == (None, None)


def test_a_reply_names_what_to_publish_in_order_and_marks_what_was_published(any_engine):
    """``to_publish``: the reply's events and, before them, a same user's earlier event still
    unpublished (read in the writing transaction); ``published``: marked in that transaction,
    and so not named again."""
    seed(any_engine, 3)
    with any_engine.begin() as conn:  # the deposit's and the orders' events reached Redis
        conn.execute(update(outbox).values(published_at=utcnow()))
    first = apply(any_engine, {"7001": StatusEntry("Canceled", 0, None, None)}, [1])
    assert [r.id for r in first.to_publish] == [first.changes[0].event.outbox_id]
    # first's event is left unpublished (a crash before Redis): the next reply of the same
    # user publishes it first; another reply marks the one it is told was published
    second = apply(any_engine, {"7002": StatusEntry("Canceled", 0, None, None)}, [2])
    ids = [r.id for r in second.to_publish]
    assert ids == [first.changes[0].event.outbox_id, second.changes[0].event.outbox_id]
    canceled = StatusEntry("Canceled", 0, None, None)
    third = apply_observations(any_engine, "sim", [3], {"7003": canceled},
                               observed_at=utcnow(), decimals=2, poll_interval=30,
                               published=ids)
    assert [r.id for r in third.to_publish] == [third.changes[0].event.outbox_id]
    with any_engine.connect() as conn:
        marked = dict(conn.execute(select(outbox.c.id, outbox.c.published_at)).all())
    assert {i for i, at in marked.items() if at is None} == {third.changes[0].event.outbox_id}
    # an unchanged reply has nothing to publish and still marks what it is given
    nothing = apply_observations(any_engine, "sim", [3], {}, observed_at=utcnow(), decimals=2,
                                 poll_interval=30,
                                 published=[third.changes[0].event.outbox_id])
    assert nothing.to_publish == [] and nothing.changes == []
    with any_engine.connect() as conn:
        assert conn.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None))).all() \
            == []
