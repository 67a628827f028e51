"""The webhook delivery queue in the database: what is still to POST, and who is POSTing it.

An event meant for webhooks gets a ``webhook_deliveries`` row in the transaction that writes
the event (:func:`paxyo.events.record_event`), so no crash, restart or Redis outage can lose
one. A user's lowest pending row is that user's cursor: only it may be sent, so a user's
events go out in id order, and a row is deleted once the receiver answers 2xx. Several senders
share the work by claiming rows with a conditional UPDATE (a lease): a row is in flight at one
sender at a time, and a sender that dies holding one gives it up when the lease runs out. A
lease is timed from the clock read inside the claiming transaction, so a claim that waited for
a lock still gets all of it.

``next_attempt_at`` is when the sender looks at a row, and only a user's first pending row has
one: the rows behind it hold :data:`~paxyo.events.WEBHOOK_BEHIND`, so that the search for due
events reads users' first events only, not every event queued behind them (while a receiver
is down, or while one user's long backlog drains). When a user's first row leaves (delivered,
or given up) the next one is given the current time, in a transaction that holds the user's
account row: :func:`paxyo.events.record_event` holds it too while it decides whether a new
row is first or behind, so neither misses the other. A row never attempted is sent as soon as
it becomes its user's first, whatever its ``next_attempt_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Select, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from paxyo.clock import utcnow
from paxyo.events import WEBHOOK_BEHIND as BEHIND
from paxyo.events import WEBHOOK_PENDING as PENDING
from paxyo.events import event_bytes
from paxyo.ledger import lock_balance
from paxyo.store.engine import transactional
from paxyo.store.schema import outbox, webhook_deliveries

FAILED = "failed"
MAX_ERROR = 255
IN_CHUNK = 500  # ids per IN (...) list: SQLite's bound parameters are limited

_d = webhook_deliveries


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed event: its id, user, bytes to POST and delivery history so far."""

    event_id: int
    user_id: int
    attempts: int
    first_attempt_at: datetime | None
    body: bytes


@dataclass(frozen=True, slots=True)
class WebhookStatus:
    pending: int
    failed: int
    oldest_pending_at: datetime | None  # when the oldest undelivered event was created
    last_error: str | None
    last_error_at: datetime | None


class UnknownEvents(LookupError):
    """Event ids that name no event in the outbox."""


def _claimable(now: datetime):  # type: ignore[no-untyped-def]
    return and_(_d.c.state == PENDING,
                or_(_d.c.lease_until.is_(None), _d.c.lease_until < now))


def _claim(conn: Connection, event_id: int, owner: str, now: datetime,
           lease_until: datetime) -> bool:
    result = conn.execute(update(_d).where(_d.c.event_id == event_id, _claimable(now))
                          .values(lease_owner=owner, lease_until=lease_until))
    return result.rowcount == 1


def _deliveries(conn: Connection, event_ids: Sequence[int]) -> list[Delivery]:
    rows = conn.execute(
        select(_d.c.event_id, _d.c.user_id, _d.c.attempts, _d.c.first_attempt_at,
               outbox.c.type, outbox.c.payload)
        .join(outbox, outbox.c.id == _d.c.event_id)
        .where(_d.c.event_id.in_(list(event_ids))).order_by(_d.c.event_id)).all()
    return [Delivery(r.event_id, r.user_id, r.attempts, r.first_attempt_at,
                     event_bytes(r.event_id, r.type, r.payload)) for r in rows]


def due_heads(now: datetime, limit: int) -> Select[tuple[int]]:
    """Users' first pending events that are due and not in flight, the longest waiting first."""
    earlier = _d.alias("earlier")
    return (select(_d.c.event_id)
            .where(_d.c.state == PENDING, _d.c.next_attempt_at <= now,
                   or_(_d.c.lease_until.is_(None), _d.c.lease_until < now),
                   ~exists().where(earlier.c.user_id == _d.c.user_id,
                                   earlier.c.state == PENDING,
                                   earlier.c.event_id < _d.c.event_id))
            .order_by(_d.c.next_attempt_at, _d.c.event_id).limit(limit))


def claim_due(engine: Engine, owner: str, *, lease_seconds: float, limit: int,
              clock: Callable[[], datetime] = utcnow) -> list[Delivery]:
    """Claim up to ``limit`` users' next events that are due, at most one per user."""

    def run(conn: Connection) -> list[Delivery]:
        now = clock()  # after BEGIN: a claim that waited for the lock is leased from now
        ids = [row.event_id for row in conn.execute(due_heads(now, limit))]
        lease_until = now + timedelta(seconds=lease_seconds)
        claimed = [i for i in ids if _claim(conn, i, owner, now, lease_until)]
        return _deliveries(conn, claimed) if claimed else []

    return transactional(engine, run)


def claim_next(engine: Engine, owner: str, user_id: int, *, lease_seconds: float,
               clock: Callable[[], datetime] = utcnow) -> Delivery | None:
    """Claim this user's next pending event if it is due (after one was delivered).

    An event never attempted is due at once: it waited only for the one before it.
    """

    def run(conn: Connection) -> Delivery | None:
        now = clock()
        head = conn.execute(
            select(_d.c.event_id, _d.c.attempts, _d.c.next_attempt_at)
            .where(_d.c.user_id == user_id, _d.c.state == PENDING)
            .order_by(_d.c.event_id).limit(1)).first()
        if head is None or (head.attempts > 0 and head.next_attempt_at > now):
            return None
        if not _claim(conn, head.event_id, owner, now,
                      now + timedelta(seconds=lease_seconds)):
            return None
        return _deliveries(conn, [head.event_id])[0]

    return transactional(engine, run)


def mark_delivered(engine: Engine, delivery: Delivery, owner: str, *,
                   clock: Callable[[], datetime] = utcnow) -> None:
    """Delete a delivered event's row (if still ours) and bring the user's next one forward."""

    def run(conn: Connection) -> None:
        lock_balance(conn, delivery.user_id)  # see the module docstring
        deleted = conn.execute(delete(_d).where(_d.c.event_id == delivery.event_id,
                                                _d.c.lease_owner == owner)).rowcount
        if deleted:
            _bring_forward(conn, delivery.user_id, clock())

    transactional(engine, run)


def _bring_forward(conn: Connection, user_id: int, at: datetime) -> None:
    """Give the user's first pending row a time if it was waiting behind another."""
    head = conn.execute(select(_d.c.event_id, _d.c.next_attempt_at)
                        .where(_d.c.user_id == user_id, _d.c.state == PENDING)
                        .order_by(_d.c.event_id).limit(1)).first()
    if head is not None and head.next_attempt_at >= BEHIND:
        conn.execute(update(_d).where(_d.c.event_id == head.event_id)
                     .values(next_attempt_at=at))


def mark_attempt_failed(engine: Engine, delivery: Delivery, owner: str, *, error: str,
                        now: datetime, retry_at: datetime | None) -> None:
    """Record a failed attempt: retry at ``retry_at``, or (None) give the event up as failed."""
    values: dict[str, object] = {
        "attempts": delivery.attempts + 1,
        "first_attempt_at": delivery.first_attempt_at or now,
        "last_attempt_at": now, "last_error": error[:MAX_ERROR],
        "lease_owner": None, "lease_until": None,
    }
    if retry_at is None:
        values.update(state=FAILED, next_attempt_at=now)
    else:
        values.update(next_attempt_at=retry_at)

    def run(conn: Connection) -> None:
        if retry_at is None:
            lock_balance(conn, delivery.user_id)  # the next event comes first: see above
        mine = conn.execute(update(_d).where(_d.c.event_id == delivery.event_id,
                                             _d.c.lease_owner == owner).values(**values))
        if mine.rowcount == 1 and retry_at is None:
            _bring_forward(conn, delivery.user_id, now)

    transactional(engine, run)


def release(engine: Engine, event_ids: Sequence[int], owner: str) -> None:
    """Give back claims not attempted (a sender stopping)."""
    if event_ids:
        transactional(engine, lambda conn: conn.execute(
            update(_d).where(_d.c.event_id.in_(list(event_ids)), _d.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)))


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(_d)
                                .where(_d.c.state == PENDING)).scalar_one())


def read_status(engine: Engine) -> WebhookStatus:
    with engine.connect() as conn:
        counts = dict(conn.execute(select(_d.c.state, func.count()).group_by(_d.c.state)).all())
        oldest = conn.execute(
            select(outbox.c.created_at).join(_d, outbox.c.id == _d.c.event_id)
            .where(_d.c.state == PENDING).order_by(_d.c.event_id).limit(1)).scalar()
        last = conn.execute(
            select(_d.c.last_error, _d.c.last_attempt_at).where(_d.c.last_error.is_not(None))
            .order_by(_d.c.last_attempt_at.desc(), _d.c.event_id.desc()).limit(1)).first()
    return WebhookStatus(pending=int(counts.get(PENDING, 0)), failed=int(counts.get(FAILED, 0)),
                       oldest_pending_at=oldest,
                       last_error=last.last_error if last else None,
                       last_error_at=last.last_attempt_at if last else None)


def retry(engine: Engine, event_ids: Sequence[int] | None, now: datetime) -> int:
    """Send events again from their first attempt: every failed one (None) or these ids.

    An id already delivered is queued again from the outbox; one still queued keeps its claim
    if it is in flight. A user with an event in flight gets the others after it. Unknown ids
    raise :class:`UnknownEvents` and change nothing. Returns how many events were queued.
    """
    fresh = {"state": PENDING, "attempts": 0, "first_attempt_at": None,
             "last_attempt_at": None, "last_error": None}

    def run(conn: Connection) -> int:
        if event_ids is None:
            rows = dict(conn.execute(select(_d.c.event_id, _d.c.user_id)
                                     .where(_d.c.state == FAILED)).all())
            new: dict[int, int] = {}
        else:
            wanted = sorted(set(event_ids))
            known = {i: u for part in _chunks(wanted) for i, u in conn.execute(
                select(outbox.c.id, outbox.c.user_id).where(outbox.c.id.in_(part)))}
            missing = [i for i in wanted if i not in known]
            if missing:
                raise UnknownEvents(missing)
            rows = {i: u for part in _chunks(wanted) for i, u in conn.execute(
                select(_d.c.event_id, _d.c.user_id).where(_d.c.event_id.in_(part)))}
            new = {i: known[i] for i in wanted if i not in rows}
        users = sorted({*rows.values(), *new.values()})
        for user_id in users:  # in one order, as every writer takes them: no deadlock
            lock_balance(conn, user_id)
        for part in _chunks(sorted(rows)):
            conn.execute(update(_d).where(_d.c.event_id.in_(part))
                         .values(**fresh, next_attempt_at=BEHIND))
        for event_id, user_id in new.items():
            conn.execute(insert(_d).values(event_id=event_id, user_id=user_id, state=PENDING,
                                           attempts=0, next_attempt_at=BEHIND))
        not_before = _in_flight_until(conn, now)
        for user_id in users:
            _bring_forward(conn, user_id, not_before.get(user_id, now))
        return len(rows) + len(new)

    return transactional(engine, run)


def _in_flight_until(conn: Connection, now: datetime) -> dict[int, datetime]:
    """Users with an event in flight, and when its claim ends (their others wait for it)."""
    return dict(conn.execute(
        select(_d.c.user_id, func.max(_d.c.lease_until))
        .where(_d.c.state == PENDING, _d.c.lease_until > now).group_by(_d.c.user_id)).all())


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield list(ids[start:start + IN_CHUNK])
