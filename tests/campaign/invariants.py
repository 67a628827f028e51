"""The invariants of design.md, checked against what one run recorded. Pure functions: each
returns the list of violations it found, one readable line each.

- every order ends in the status the provider served first as terminal, with exactly the
  refund rule's total refunded, credited once;
- every balance equals the sum of its ledger entries, and the balance the campaign expects
  (deposits accepted - charges accepted + expected refunds);
- every event reaches each WebSocket connection exactly once, in order, with no gap: after a
  resume (``recovered: true``) right after the client's ``last_id``, otherwise right after the
  hello's ``last_id``; and the connection a client holds at the end has every event;
- every order settled within the bound once the faults stopped (checked by the run, which
  passes what did not settle in ``Outcome.unsettled``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ZERO = Decimal("0.00")
TERMINAL_CLASSES = ("completed", "partial", "canceled")


@dataclass(frozen=True)
class ExpectedOrder:
    id: int
    user_id: int
    charge: Decimal
    quantity: int
    status: str          # Completed, Partial or Canceled
    remains: int | None  # checked for Partial only
    refund: Decimal


@dataclass
class Expected:
    """What the campaign did and what must follow from it."""

    deposits: dict[int, Decimal]            # user -> total of accepted deposits
    orders: dict[int, ExpectedOrder]        # accepted orders
    refused_orders: set[int] = field(default_factory=set)  # answered 409: must not exist

    def balance(self, user_id: int) -> Decimal:
        spent = sum((o.charge - o.refund for o in self.orders.values() if o.user_id == user_id),
                    ZERO)
        return self.deposits.get(user_id, ZERO) - spent


@dataclass(frozen=True)
class OrderRow:
    id: int
    user_id: int
    status: str
    status_class: str
    remains: int | None
    charge: Decimal
    refunded: Decimal
    quantity: int


@dataclass(frozen=True)
class LedgerRow:
    user_id: int
    kind: str
    amount: Decimal
    order_id: int | None
    key: str


@dataclass
class Snapshot:
    """The store after the run (read straight from the database)."""

    balances: dict[int, Decimal]
    orders: dict[int, OrderRow]
    ledger: list[LedgerRow]
    events: dict[int, list[dict[str, Any]]]  # user -> events as clients see them, in id order
    unpublished: int = 0


@dataclass
class Connection:
    """One WebSocket connection of a client: what it asked for and what it got."""

    sent_last_id: str | None
    hello: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ClientLog:
    user_id: int
    connections: list[Connection] = field(default_factory=list)


def check_orders(expected: Expected, snapshot: Snapshot) -> list[str]:
    problems = []
    for order in expected.orders.values():
        row = snapshot.orders.get(order.id)
        if row is None:
            problems.append(f"order {order.id}: accepted by the API but not in the store")
            continue
        if row.status != order.status or row.status_class not in TERMINAL_CLASSES:
            problems.append(f"order {order.id}: status {row.status!r} ({row.status_class}), "
                            f"expected {order.status!r}")
        if order.status == "Partial" and row.remains != order.remains:
            problems.append(f"order {order.id}: Partial remains {row.remains}, "
                            f"expected {order.remains}")
        if row.refunded != order.refund:
            problems.append(f"order {order.id} ({order.status}, remains {order.remains}, "
                            f"charge {order.charge}, quantity {order.quantity}): refunded "
                            f"{row.refunded}, expected {order.refund}")
        if row.charge != order.charge or row.user_id != order.user_id:
            problems.append(f"order {order.id}: stored charge/user {row.charge}/{row.user_id}, "
                            f"sent {order.charge}/{order.user_id}")
    for order_id in sorted(expected.refused_orders & set(snapshot.orders)):
        problems.append(f"order {order_id}: refused with 409 but stored")
    for order_id in sorted(set(snapshot.orders) - set(expected.orders)
                           - expected.refused_orders):
        problems.append(f"order {order_id}: in the store but never accepted")
    return problems


def check_ledger(expected: Expected, snapshot: Snapshot) -> list[str]:
    """Refunds credited once and right; charges once; deposits once per reference."""
    problems = []
    refunds: dict[int, list[Decimal]] = defaultdict(list)
    charges: dict[int, list[Decimal]] = defaultdict(list)
    deposits: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for entry in snapshot.ledger:
        if entry.kind == "refund" and entry.order_id is not None:
            refunds[entry.order_id].append(entry.amount)
        elif entry.kind == "charge" and entry.order_id is not None:
            charges[entry.order_id].append(entry.amount)
        elif entry.kind == "deposit":
            deposits[entry.user_id] += entry.amount
    keys = Counter(entry.key for entry in snapshot.ledger)
    problems += [f"ledger key {key!r} used {n} times" for key, n in keys.items() if n > 1]
    for order in expected.orders.values():
        credited = refunds.get(order.id, [])
        if len(credited) > 1:
            problems.append(f"order {order.id}: refund credited {len(credited)} times "
                            f"({', '.join(map(str, credited))}) for one terminal status")
        if sum(credited, ZERO) != order.refund:
            problems.append(f"order {order.id}: refund entries total {sum(credited, ZERO)}, "
                            f"expected {order.refund}")
        if charges.get(order.id, []) != [-order.charge]:
            problems.append(f"order {order.id}: charge entries {charges.get(order.id)}, "
                            f"expected [-{order.charge}]")
    for user, total in expected.deposits.items():
        if deposits.get(user, ZERO) != total:
            problems.append(f"user {user}: deposits total {deposits.get(user, ZERO)}, "
                            f"expected {total}")
    return problems


def check_balances(expected: Expected, snapshot: Snapshot) -> list[str]:
    problems = []
    sums: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for entry in snapshot.ledger:
        sums[entry.user_id] += entry.amount
    for user in sorted(set(snapshot.balances) | set(expected.deposits)):
        balance = snapshot.balances.get(user, ZERO)
        if balance != sums[user]:
            problems.append(f"user {user}: balance {balance} but ledger entries sum to "
                            f"{sums[user]}")
        if balance != expected.balance(user):
            problems.append(f"user {user}: balance {balance}, expected "
                            f"{expected.balance(user)}")
    return problems


def check_event_log(expected: Expected, snapshot: Snapshot) -> list[str]:
    """The events themselves: per order the refunds add up; each user's last one carries the
    final balance; nothing is left unpublished."""
    problems = []
    refunded: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for user, events in snapshot.events.items():
        for event in events:
            if event.get("type") == "order.updated":
                refunded[event["order_id"]] += Decimal(event["refund"])
        if events and Decimal(events[-1]["balance"]) != snapshot.balances.get(user):
            problems.append(f"user {user}: last event {events[-1]['id']} says balance "
                            f"{events[-1]['balance']}, the account has "
                            f"{snapshot.balances.get(user)}")
    for order in expected.orders.values():
        if refunded[order.id] != order.refund:
            problems.append(f"order {order.id}: events announce {refunded[order.id]} refunded, "
                            f"expected {order.refund}")
    if snapshot.unpublished:
        problems.append(f"{snapshot.unpublished} outbox events never published")
    return problems


def check_clients(snapshot: Snapshot, clients: Iterable[ClientLog]) -> list[str]:
    problems = []
    for client in clients:
        events = snapshot.events.get(client.user_id, [])
        index = {event["id"]: i for i, event in enumerate(events)}
        greeted = [c for c in client.connections if c.hello is not None]
        for n, conn in enumerate(greeted):
            problems += _check_connection(client.user_id, n, conn, events, index)
        if not greeted:
            problems.append(f"user {client.user_id}: the WebSocket client was never greeted")
            continue
        last = greeted[-1]
        start = _start(last, index)
        if start is not None and start + len(last.events) != len(events):
            problems.append(f"user {client.user_id}: the client's last connection got "
                            f"{len(last.events)} of the {len(events) - start} events after "
                            f"its start")
    return problems


def _start(conn: Connection, index: dict[str, int]) -> int | None:
    """Where in the user's events this connection must start, or None when unknowable."""
    assert conn.hello is not None
    after = conn.sent_last_id if conn.hello.get("recovered") else conn.hello.get("last_id")
    if after is None:
        return 0
    position = index.get(after)
    return None if position is None else position + 1


def _check_connection(user: int, n: int, conn: Connection, events: list[dict[str, Any]],
                      index: dict[str, int]) -> list[str]:
    hello = conn.hello or {}
    where = f"user {user} connection {n}"
    if hello.get("user_id") != user:
        return [f"{where}: hello for user {hello.get('user_id')}"]
    if hello.get("recovered") and conn.sent_last_id is None:
        return [f"{where}: recovered true without a last_id"]
    start = _start(conn, index)
    if start is None:
        return [f"{where}: resumed after {conn.sent_last_id!r} / hello last_id "
                f"{hello.get('last_id')!r}, which is no event of this user"]
    want = events[start:start + len(conn.events)]
    if conn.events == want:
        return []
    got_ids = [e.get("id") for e in conn.events]
    want_ids = [e.get("id") for e in want]
    for i, (got, exp) in enumerate(zip(got_ids, want_ids, strict=False)):
        if got != exp:
            return [f"{where} (recovered={hello.get('recovered')}): event #{i} is {got}, "
                    f"expected {exp} (got {got_ids[max(0, i - 2):i + 3]}, expected "
                    f"{want_ids[max(0, i - 2):i + 3]})"]
    if len(got_ids) > len(want_ids):
        return [f"{where}: {len(got_ids) - len(want_ids)} events beyond the last one "
                f"({got_ids[len(want_ids):][:5]})"]
    for got, exp in zip(conn.events, want, strict=True):
        if got != exp:
            return [f"{where}: event {got.get('id')} differs from the stored one: {got} != {exp}"]
    return []


def check_all(expected: Expected, snapshot: Snapshot, clients: Iterable[ClientLog]) -> list[str]:
    return (check_orders(expected, snapshot) + check_ledger(expected, snapshot)
            + check_balances(expected, snapshot) + check_event_log(expected, snapshot)
            + check_clients(snapshot, clients))
