"""observations.decide: what one provider reply means for each order, decided before any write."""

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from paxyo.accounts import deposit
from paxyo.clock import utcnow
from paxyo.limits import MAX_REMAINS
from paxyo.observations import INVALID_ID, decide
from paxyo.orders import NewOrder, place_order
from paxyo.status_entries import EntryError, StatusEntry
from paxyo.store.schema import orders

D = Decimal


def entry(status: str, remains: int | None = 0) -> StatusEntry:
    return StatusEntry(status, remains, None, None)


def place(engine, oid: int, user: int = 111, provider_order_id: str | None = None) -> None:
    deposit(engine, user, D("10.00"), f"seed-{oid}", 2)
    place_order(engine, NewOrder(oid, user, "sim", provider_order_id or str(7000 + oid), 1000,
                                 D("10.00")), decimals=2, poll_interval=30)


def read(engine, *ids: int):
    with engine.connect() as conn:
        rows = conn.execute(select(orders).where(orders.c.id.in_(ids))
                            .order_by(orders.c.id)).all()
    return rows


def set_row(engine, oid: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.id == oid).values(**values))


def touches(decisions) -> dict[int, str | None]:
    return {t.order_id: t.review_status for t in decisions.touches}


def test_terminal_or_later_observed_orders_are_stale_and_left_alone(engine):
    now = utcnow()
    for oid in (1, 2, 3):
        place(engine, oid)
    set_row(engine, 1, status="Completed", status_class="completed", remains=0)
    set_row(engine, 2, observed_at=now + timedelta(seconds=5))  # someone saw a newer reply
    set_row(engine, 3, observed_at=now - timedelta(seconds=5))  # older: still ours to decide
    replies = {str(7000 + oid): entry("Canceled") for oid in (1, 2, 3)}
    decisions = decide(read(engine, 1, 2, 3), replies, now)
    report = decisions.report
    assert (report.stale, report.checked) == (2, 1)
    assert [row.id for row, _, _ in decisions.pending] == [3]
    assert decisions.touches == []


def test_an_invalid_stored_provider_id_is_touched_for_review_and_never_looked_up(engine):
    place(engine, 1)
    set_row(engine, 1, provider_order_id="1,2,3")  # stored before ids were checked at the door
    replies = {"1,2,3": entry("Canceled")}  # even an answer for it is not believed
    decisions = decide(read(engine, 1), replies, utcnow())
    assert (decisions.report.checked, decisions.report.no_answer) == (1, 1)
    assert decisions.pending == []
    assert touches(decisions) == {1: INVALID_ID}


def test_a_missing_answer_or_an_entry_error_is_no_answer_and_keeps_the_review_note(engine):
    for oid in (1, 2):
        place(engine, oid)
    set_row(engine, 2, review_status="Awaiting review")
    replies = {"7002": EntryError("Incorrect order ID")}  # 7001 is missing from the reply
    decisions = decide(read(engine, 1, 2), replies, utcnow())
    assert (decisions.report.checked, decisions.report.no_answer) == (2, 2)
    assert decisions.pending == []
    assert touches(decisions) == {1: None, 2: "Awaiting review"}


def test_an_unknown_status_word_is_counted_and_kept_as_the_review_text(engine):
    place(engine, 1)
    decisions = decide(read(engine, 1), {"7001": entry("  Under  review ", 5)}, utcnow())
    assert decisions.report.unknown == 1
    assert decisions.pending == []
    assert touches(decisions) == {1: "Under  review"}


@pytest.mark.parametrize("remains", [None, MAX_REMAINS + 1, -MAX_REMAINS - 1, 10**30])
def test_partial_without_usable_remains_is_bad_remains_and_never_a_change(engine, remains):
    place(engine, 1)
    set_row(engine, 1, review_status="note")
    decisions = decide(read(engine, 1), {"7001": entry("Partial", remains)}, utcnow())
    assert decisions.report.bad_remains == 1
    assert decisions.pending == []
    assert touches(decisions) == {1: "note"}


@pytest.mark.parametrize("remains", [MAX_REMAINS, -MAX_REMAINS])
def test_partial_with_remains_at_the_bounds_is_a_change(engine, remains):
    place(engine, 1)
    decisions = decide(read(engine, 1), {"7001": entry("Partial", remains)}, utcnow())
    assert decisions.report.bad_remains == 0
    [(row, status, kept)] = decisions.pending
    assert (row.id, status.name, kept) == (1, "Partial", remains)


def test_an_open_status_with_unusable_remains_keeps_the_stored_remains(engine):
    place(engine, 1)
    decisions = decide(read(engine, 1), {"7001": entry("In progress", MAX_REMAINS + 1)},
                       utcnow())
    [(_, status, remains)] = decisions.pending
    assert (status.name, remains) == ("In progress", 1000)


def test_the_same_status_and_remains_is_unchanged_and_clears_the_review_note(engine):
    place(engine, 1)
    place(engine, 2)
    set_row(engine, 1, review_status="old note")
    replies = {"7001": entry("pending", 1000),  # same status, spelled otherwise
               "7002": entry("Pending", 999)}   # same status, new remains: a change
    decisions = decide(read(engine, 1, 2), replies, utcnow())
    assert decisions.report.unchanged == 1
    assert touches(decisions) == {1: None}
    assert [(row.id, remains) for row, _, remains in decisions.pending] == [(2, 999)]


def test_changes_are_sorted_by_user_then_order(engine):
    for oid, user in ((5, 300), (4, 100), (3, 200), (2, 100), (1, 300)):
        place(engine, oid, user)
    replies = {str(7000 + oid): entry("Canceled") for oid in range(1, 6)}
    rows = read(engine, 1, 2, 3, 4, 5)[::-1]
    decisions = decide(rows, replies, utcnow())
    assert [(row.user_id, row.id) for row, _, _ in decisions.pending] == [
        (100, 2), (100, 4), (200, 3), (300, 1), (300, 5)]
    assert decisions.report.checked == 5 and decisions.touches == []


def test_decide_writes_nothing(engine):
    for oid in range(1, 8):
        place(engine, oid)
    set_row(engine, 2, provider_order_id="bad id")
    set_row(engine, 3, status="Completed", status_class="completed")
    before = read(engine, *range(1, 8))
    replies = {"7001": entry("Canceled"), "7004": entry("Weird"),
               "7005": entry("Partial", None), "7006": entry("Pending", 1000),
               "7007": EntryError("nope")}
    decisions = decide(before, replies, utcnow())
    report = decisions.report
    assert (report.checked, report.stale, len(report.changes)) == (6, 1, 0)
    assert (report.no_answer, report.unknown, report.bad_remains, report.unchanged) == (
        2, 1, 1, 1)
    assert len(decisions.pending) == 1
    assert read(engine, *range(1, 8)) == before
