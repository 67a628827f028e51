"""Applying provider status observations to orders, exactly once.

One transaction applies a whole reply: its changes (each order's status, refund top-up through
the ledger, balance and outbox event; see paxyo.change_writes, which locks orders and accounts
in a fixed order so that concurrent appliers cannot deadlock), and the rescheduling of the
orders whose answer changes nothing. An order's status, refund, balance and event therefore
commit together or not at all, and a shard costs one write transaction rather than one per
changed order (on SQLite every write transaction queues for the same lock).

A missing id, a per-id error, an unknown status word or a Partial without numeric remains
never changes money: the order stays open and is checked again. When the reply's changes
fail together, they are applied again each in its own savepoint: one the database refuses (or
that fails on the order's own stored data) is rolled back alone, counted as ``rejected`` and
logged, and the order stays open; the rest commit.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection, Row

from paxyo.change_writes import AppliedChange, write_change, write_changes
from paxyo.clock import utcnow
from paxyo.events import mark_published, unpublished_rows
from paxyo.leases import lease_ended, release, still_open
from paxyo.limits import MAX_REMAINS, is_provider_order_id
from paxyo.schedule import next_checks
from paxyo.status_entries import EntryError, StatusEntry
from paxyo.statuses import Status, StatusClass, normalise_status
from paxyo.store.engine import is_retryable, transactional
from paxyo.store.schema import orders

log = logging.getLogger("paxyo.orders")

OPEN = StatusClass.OPEN.value
INVALID_ID = "invalid provider order id"  # review note of an order whose id is never sent


# What deciding needs of each order (reading every column cost more than deciding).
_READ = select(orders.c.id, orders.c.user_id, orders.c.status, orders.c.status_class,
               orders.c.observed_at, orders.c.remains, orders.c.review_status,
               orders.c.provider_order_id, orders.c.changed_at) \
    .where(orders.c.id.in_(bindparam("p_oids", expanding=True)))

# still_open(): an index on status_class must not serve these (SQLite would scan every open
# order for each statement; see paxyo.leases)
_STILL_CHECKABLE = and_(still_open(),
                        or_(orders.c.observed_at.is_(None),
                            orders.c.observed_at <= bindparam("obs")))
_CHECKED = {"observed_at": bindparam("obs"), "next_check_at": bindparam("next"),
            "review_status": bindparam("review"), **lease_ended()}
_RESCHEDULE = (update(orders).where(orders.c.id == bindparam("oid"), _STILL_CHECKABLE)
               .values(_CHECKED))
_RESCHEDULE_ALIKE = (update(orders)
                     .where(orders.c.id.in_(bindparam("oids", expanding=True)), _STILL_CHECKABLE)
                     .values(_CHECKED))


@dataclass
class ApplyReport:
    checked: int = 0
    changes: list[AppliedChange] = field(default_factory=list)
    unchanged: int = 0
    no_answer: int = 0      # missing from the reply or a per-id error
    unknown: int = 0        # a status word we do not know
    bad_remains: int = 0    # Partial without numeric remains
    stale: int = 0          # already terminal or observed later by someone else
    rejected: int = 0       # a change the store refused: rolled back alone, order kept open
    # the outbox rows to publish once committed: the changes' events and any earlier ones of
    # the same users still unpublished (paxyo.events.unpublished_rows), read under the locks
    to_publish: list[Row] = field(default_factory=list)

    def merge(self, other: ApplyReport) -> None:
        self.checked += other.checked
        self.changes.extend(other.changes)
        self.unchanged += other.unchanged
        self.no_answer += other.no_answer
        self.unknown += other.unknown
        self.bad_remains += other.bad_remains
        self.stale += other.stale
        self.rejected += other.rejected
        self.to_publish.extend(other.to_publish)


@dataclass(frozen=True, slots=True)
class _Touch:
    order_id: int
    review_status: str | None


@dataclass
class Decisions:
    """What a reply means for each order, decided before any write."""

    report: ApplyReport
    pending: list[tuple[Row, Status, int | None]] = field(default_factory=list)
    touches: list[_Touch] = field(default_factory=list)


def decide(rows: Iterable[Row], replies: Mapping[str, StatusEntry | EntryError],
           observed_at: datetime) -> Decisions:
    """Sort each order by what its entry says: a change to apply, a check to record (no
    answer, an unknown word, unusable remains, nothing new), or stale. Pure: no I/O."""
    decisions = Decisions(ApplyReport())
    report, touches = decisions.report, decisions.touches
    for row in rows:
        if row.status_class != OPEN or (row.observed_at and row.observed_at > observed_at):
            report.stale += 1
            continue
        report.checked += 1
        if not is_provider_order_id(row.provider_order_id):
            report.no_answer += 1
            touches.append(_Touch(row.id, INVALID_ID))
            continue
        entry = replies.get(row.provider_order_id)
        if entry is None or isinstance(entry, EntryError):
            report.no_answer += 1
            touches.append(_Touch(row.id, row.review_status))
            continue
        status = normalise_status(entry.status)
        if status.cls is StatusClass.UNKNOWN:
            report.unknown += 1
            log.warning("order %s: unknown provider status %r kept open for review",
                        row.id, entry.status)
            touches.append(_Touch(row.id, status.name))
            continue
        usable = _usable_remains(entry.remains)
        if status.cls is StatusClass.PARTIAL and usable is None:
            report.bad_remains += 1
            log.warning("order %s: Partial without usable remains (%r); no refund, "
                        "checked again", row.id, entry.remains)
            touches.append(_Touch(row.id, row.review_status))
            continue
        remains = usable if usable is not None else row.remains
        if status.name == row.status and remains == row.remains:
            report.unchanged += 1
            touches.append(_Touch(row.id, None))
            continue
        decisions.pending.append((row, status, remains))
    decisions.pending.sort(key=lambda item: (item[0].user_id, item[0].id))
    return decisions


def apply_observations(
    engine: Engine,
    provider: str,
    order_ids: Iterable[int],
    replies: Mapping[str, StatusEntry | EntryError],
    *,
    observed_at: datetime,
    decimals: int,
    poll_interval: float,
    lease_token: str | None = None,
    webhook: bool = False,
    published: Sequence[int] = (),
) -> ApplyReport:
    """Apply one provider reply (keyed by provider order id) to the given panel orders.

    ``lease_token``: a worker's shard, whose leases end in the same transaction (each in the
    statement that writes its order; then any order not written), saving a write
    transaction per shard. The caller counts the returned report in its metrics once it is
    committed. ``webhook``: also queue each event for
    webhook delivery (PAXYO_WEBHOOK_URL is set). ``published``: outbox ids the caller has
    published since its last write, marked published in this transaction (rather than in one
    of their own).
    """
    ids = list(order_ids)
    if not ids:
        return ApplyReport()
    with engine.connect() as conn:
        rows = conn.execute(_READ, {"p_oids": ids}).all()
    decisions = decide(rows, replies, observed_at)
    report = decisions.report
    if not decisions.pending and not decisions.touches and lease_token is None \
            and not published:
        return report

    def run(conn: Connection, *, isolated: bool
            ) -> tuple[list[AppliedChange | _Rejected | None], list[Row]]:
        mark_published(conn, published)
        applied: list[AppliedChange | _Rejected | None]
        if isolated:
            applied = [_apply_alone(conn, row, status, remains, observed_at, decimals,
                                    poll_interval, webhook, lease_token)
                       for row, status, remains in decisions.pending]
        elif decisions.pending:
            applied = list(write_changes(
                conn, [(row.id, status, remains) for row, status, remains in decisions.pending],
                observed_at=observed_at, decimals=decimals, poll_interval=poll_interval,
                webhook=webhook, lease_token=lease_token))
        else:
            applied = []
        refused = [_Touch(r.order_id, r.review_status) for r in applied
                   if isinstance(r, _Rejected)]
        if decisions.touches or refused:
            _reschedule(conn, decisions.touches + refused, rows, observed_at, poll_interval,
                        lease_token)
        if lease_token is not None:  # orders not written (closed or observed later meanwhile)
            release(conn, lease_token)
        return applied, unpublished_rows(conn, [a.event.outbox_id for a in applied
                                                if isinstance(a, AppliedChange)])

    # Every change in its own savepoint costs seven statements per change rather than a few
    # per reply; so first write the reply's changes together, and only when that fails (not
    # on a lock conflict, which the transaction's own retry handles) apply it again with each
    # change on its own, so that the one that fails is set aside alone.
    try:
        outcome, report.to_publish = transactional(engine,
                                                   functools.partial(run, isolated=False))
    except Exception as exc:
        if is_retryable(exc) or not decisions.pending:
            raise
        log.info("a change of this reply failed (%s); applying each change on its own",
                 _first_line(exc))
        outcome, report.to_publish = transactional(engine,
                                                   functools.partial(run, isolated=True))
    for change in outcome:
        if change is None:
            report.stale += 1  # a concurrent applier got there first
        elif isinstance(change, _Rejected):
            report.rejected += 1
        else:
            report.changes.append(change)
    return report


def _usable_remains(remains: int | None) -> int | None:
    """The provider's remains if the store can hold it (parsers bound it already)."""
    return remains if remains is not None and -MAX_REMAINS <= remains <= MAX_REMAINS else None


@dataclass(frozen=True, slots=True)
class _Rejected:
    order_id: int
    review_status: str | None


def _apply_alone(conn: Connection, row: Row, status: Status, remains: int | None,
                 observed_at: datetime, decimals: int, poll_interval: float,
                 webhook: bool, lease_token: str | None) -> AppliedChange | _Rejected | None:
    """One change in its own savepoint, so that a change that fails is undone on its own.

    Lock conflicts (deadlocks, serialization failures, a busy SQLite) are not this change's
    fault: they abort the whole transaction, which :func:`transactional` retries.
    """
    try:
        with conn.begin_nested():
            return write_change(conn, row.id, status, remains, observed_at=observed_at,
                                decimals=decimals, poll_interval=poll_interval,
                                webhook=webhook, lease_token=lease_token)
    except Exception as exc:
        conflict = _lock_conflict(exc)
        if conflict is exc:
            raise
        if conflict is not None:
            raise conflict from exc
        log.error("order %s: change to %s (remains %r) set aside, order kept open: %s",
                  row.id, status.name, remains, _first_line(exc))
        return _Rejected(row.id, row.review_status)


def _lock_conflict(exc: BaseException) -> BaseException | None:
    """The lock conflict behind ``exc``, if any: ``exc`` itself, or the one it was raised
    while handling. On MariaDB a deadlock rolls back the whole transaction, savepoints
    included, so leaving the savepoint then fails ("SAVEPOINT ... does not exist", 1305)
    and hides the deadlock, which the transaction's retry must still see."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if is_retryable(seen):
            return seen
        seen = seen.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _reschedule(conn: Connection, touches: list[_Touch], rows: list[Row],
                observed_at: datetime, poll_interval: float, lease_token: str | None) -> None:
    """Record that these orders were checked and when to check them next.

    One statement per (review note, next check) that several orders share (orders unchanged
    for long share both), and one multi-row statement for the rest.
    """
    changed_at = {row.id: row.changed_at for row in rows}
    next_at = next_checks(utcnow(), poll_interval)
    groups: dict[tuple[str | None, datetime], list[int]] = defaultdict(list)
    for t in touches:
        groups[(t.review_status, next_at(changed_at[t.order_id]))].append(t.order_id)
    singles = []
    for (review, when), ids in groups.items():
        params = {"review": review, "obs": observed_at, "next": when, "p_lease": lease_token}
        if len(ids) == 1:
            singles.append({**params, "oid": ids[0]})
        else:
            conn.execute(_RESCHEDULE_ALIKE, {**params, "oids": ids})
    if singles:
        conn.execute(_RESCHEDULE, singles)


def refund_line(change: AppliedChange) -> str:
    """The seed's log line: ``REFUND: $7.00 for Order #123 (Partial, 700 remains)``."""
    detail = f"Partial, {change.remains} remains" if change.status == "Partial" else change.status
    return f"REFUND: ${change.refund} for Order #{change.order_id} ({detail})"
