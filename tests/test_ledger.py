"""Deposits, order placement and status application on SQLite, PostgreSQL and MySQL."""

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from paxyo.accounts import deposit, get_balance
from paxyo.clock import utcnow
from paxyo.errors import Conflict
from paxyo.ledger import ledger_mismatches
from paxyo.observations import apply_observations, refund_line
from paxyo.orders import NewOrder, get_order, place_order
from paxyo.store.schema import ledger_entries, outbox
from providers.replies import EntryError, StatusEntry

D = Decimal


def entry(status, remains=None):
    return StatusEntry(status=status, remains=remains, charge=None, currency=None)


def order(oid, user=111, charge="10.00", quantity=1000, pid=None):
    return NewOrder(id=oid, user_id=user, provider="sim", provider_order_id=str(pid or oid + 9000),
                    quantity=quantity, charge=D(charge), service="1", link="https://x/p")


def apply(engine, replies, ids):
    return apply_observations(engine, "sim", ids, replies, observed_at=utcnow(), decimals=2,
                              poll_interval=30)


def assert_ledger_consistent(engine):
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []


def test_deposit_is_idempotent_per_reference(any_engine):
    first = deposit(any_engine, 111, D("25.00"), "pay-981", 2)
    again = deposit(any_engine, 111, D("25.00"), "pay-981", 2)
    assert (first.created, first.balance) == (True, D("25.00"))
    assert (again.created, again.balance, again.event) == (False, D("25.00"), None)
    with pytest.raises(Conflict):
        deposit(any_engine, 111, D("30.00"), "pay-981", 2)
    assert get_balance(any_engine, 111) == D("25.00")
    assert get_balance(any_engine, 222) is None
    assert_ledger_consistent(any_engine)


def test_place_order_debits_once_and_rejects_conflicts(any_engine):
    deposit(any_engine, 111, D("25.00"), "p1", 2)
    placed = place_order(any_engine, order(123), decimals=2, poll_interval=30)
    assert placed.created and placed.order["charge"] == "10.00"
    assert placed.order["status"] == "Pending" and placed.order["refunded"] == "0.00"
    replay = place_order(any_engine, order(123), decimals=2, poll_interval=30)
    assert not replay.created and replay.event is None
    assert get_balance(any_engine, 111) == D("15.00")
    with pytest.raises(Conflict, match="different body"):
        place_order(any_engine, order(123, charge="9.00"), decimals=2, poll_interval=30)
    with pytest.raises(Conflict, match="insufficient balance"):
        place_order(any_engine, order(124, charge="15.01"), decimals=2, poll_interval=30)
    with pytest.raises(Conflict, match="insufficient balance"):
        place_order(any_engine, order(125, user=999), decimals=2, poll_interval=30)
    assert get_balance(any_engine, 111) == D("15.00")
    assert_ledger_consistent(any_engine)


def test_refund_rule_end_to_end(any_engine):
    deposit(any_engine, 111, D("100.00"), "p1", 2)
    for oid in (1, 2, 3, 4, 5):
        place_order(any_engine, order(oid), decimals=2, poll_interval=30)
    assert get_balance(any_engine, 111) == D("50.00")
    report = apply(any_engine, {
        "9001": entry("Partial", 700),
        "9002": entry("Canceled", None),
        "9003": entry("Completed", 0),
        "9004": entry("In progress", 400),
        "9005": entry("cancelled", 1000),
    }, [1, 2, 3, 4, 5])
    assert len(report.changes) == 5
    refunds = {c.order_id: c.refund for c in report.changes}
    assert refunds == {1: D("7.00"), 2: D("10.00"), 3: D("0.00"), 4: D("0.00"), 5: D("10.00")}
    assert get_balance(any_engine, 111) == D("77.00")
    assert get_order(any_engine, 1, 2)["refunded"] == "7.00"
    assert get_order(any_engine, 1, 2)["status"] == "Partial"
    assert get_order(any_engine, 5, 2)["status"] == "Canceled"
    assert get_order(any_engine, 4, 2)["remains"] == 400
    lines = sorted(refund_line(c) for c in report.changes if c.refund > 0)
    assert lines == ["REFUND: $10.00 for Order #2 (Canceled)",
                     "REFUND: $10.00 for Order #5 (Canceled)",
                     "REFUND: $7.00 for Order #1 (Partial, 700 remains)"]
    assert_ledger_consistent(any_engine)


def test_reapplying_the_same_answer_changes_nothing(any_engine):
    deposit(any_engine, 111, D("20.00"), "p1", 2)
    place_order(any_engine, order(1), decimals=2, poll_interval=30)
    place_order(any_engine, order(2), decimals=2, poll_interval=30)
    replies = {"9001": entry("Partial", 700), "9002": entry("Canceled")}
    first = apply(any_engine, replies, [1, 2])
    second = apply(any_engine, replies, [1, 2])
    assert len(first.changes) == 2 and second.changes == [] and second.stale == 2
    assert get_balance(any_engine, 111) == D("17.00")
    with any_engine.connect() as conn:
        refunds = conn.execute(select(func.count()).select_from(ledger_entries)
                               .where(ledger_entries.c.kind == "refund")).scalar_one()
    assert refunds == 2
    assert_ledger_consistent(any_engine)


def test_bad_answers_never_move_money(any_engine):
    deposit(any_engine, 111, D("50.00"), "p1", 2)
    for oid in (1, 2, 3, 4, 5):
        place_order(any_engine, order(oid), decimals=2, poll_interval=30)
    report = apply(any_engine, {
        "9001": EntryError("Incorrect order ID"),
        "9002": entry("Fail", 1000),
        "9003": entry("Partial", None),       # "remains": "Unknown"
        "9004": entry("Rejected", 0),
        # 9005 missing from the reply
    }, [1, 2, 3, 4, 5])
    assert report.changes == []
    assert (report.no_answer, report.unknown, report.bad_remains) == (2, 2, 1)
    assert get_balance(any_engine, 111) == D("0.00")
    view = get_order(any_engine, 2, 2)
    assert view["status"] == "Pending" and view["provider_status"] == "Fail"
    assert_ledger_consistent(any_engine)


def test_top_up_after_partial_and_no_change_after_terminal(any_engine):
    deposit(any_engine, 111, D("10.00"), "p1", 2)
    place_order(any_engine, order(1), decimals=2, poll_interval=30)
    apply(any_engine, {"9001": entry("In progress", 900)}, [1])
    apply(any_engine, {"9001": entry("Partial", 700)}, [1])
    later = apply(any_engine, {"9001": entry("Canceled")}, [1])
    assert later.changes == [] and later.stale == 1  # terminal: no longer applied
    assert get_order(any_engine, 1, 2)["refunded"] == "7.00"
    assert get_balance(any_engine, 111) == D("7.00")
    assert_ledger_consistent(any_engine)


def test_every_change_writes_one_outbox_event(any_engine):
    deposit(any_engine, 111, D("10.00"), "p1", 2)
    place_order(any_engine, order(1), decimals=2, poll_interval=30)
    apply(any_engine, {"9001": entry("Partial", 700)}, [1])
    with any_engine.connect() as conn:
        rows = conn.execute(select(outbox).order_by(outbox.c.id)).all()
    assert [r.type for r in rows] == ["balance.updated", "order.updated", "order.updated"]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    import orjson
    last = orjson.loads(rows[-1].payload)
    assert last["status"] == "Partial" and last["previous_status"] == "Pending"
    assert last["refund"] == "7.00" and last["balance"] == "7.00" and last["remains"] == 700
