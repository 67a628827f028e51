"""The fault campaign: its invariant checks fail on broken data (fast unit tests), and a short
fixed set of seeded runs of the real processes passes on SQLite and PostgreSQL (slow)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.campaign import invariants
from tests.campaign.invariants import (
    ClientLog,
    Connection,
    Expected,
    ExpectedOrder,
    LedgerRow,
    OrderRow,
    Snapshot,
)
from tests.campaign.scenario import make_plan, refund_for
from tests.conftest import PG_ADMIN_URL
from tests.support import unavailable

ROOT = Path(__file__).resolve().parents[1]
USER = 111
D = Decimal


def _event(n: int, type_: str, balance: str, **fields: object) -> dict[str, object]:
    return {"type": type_, "id": str(n).zfill(16), "user_id": USER, "balance": balance, **fields}


def world() -> tuple[Expected, Snapshot, list[ClientLog]]:
    """A consistent run: deposit 20.00; order 1 (10.00, 1000) Partial with 700 remains, so
    7.00 back; order 2 (5.00) Completed. Balance 20 - 10 - 5 + 7 = 12.00."""
    expected = Expected(deposits={USER: D("20.00")}, orders={
        1: ExpectedOrder(1, USER, D("10.00"), 1000, "Partial", 700, D("7.00")),
        2: ExpectedOrder(2, USER, D("5.00"), 10, "Completed", 0, D("0.00")),
    })
    events = [
        _event(1, "balance.updated", "20.00", amount="20.00"),
        _event(2, "order.updated", "10.00", order_id=1, refund="0.00", status="Pending"),
        _event(3, "order.updated", "5.00", order_id=2, refund="0.00", status="Pending"),
        _event(4, "order.updated", "12.00", order_id=1, refund="7.00", status="Partial"),
        _event(5, "order.updated", "12.00", order_id=2, refund="0.00", status="Completed"),
    ]
    snapshot = Snapshot(
        balances={USER: D("12.00")},
        orders={1: OrderRow(1, USER, "Partial", "partial", 700, D("10.00"), D("7.00"), 1000),
                2: OrderRow(2, USER, "Completed", "completed", 0, D("5.00"), D("0.00"), 10)},
        ledger=[LedgerRow(USER, "deposit", D("20.00"), None, "deposit:111:a"),
                LedgerRow(USER, "charge", D("-10.00"), 1, "charge:1"),
                LedgerRow(USER, "charge", D("-5.00"), 2, "charge:2"),
                LedgerRow(USER, "refund", D("7.00"), 1, "refund:1:7.00")],
        events={USER: events})
    client = ClientLog(USER, [
        Connection(None, {"type": "hello", "user_id": USER, "last_id": None,
                          "recovered": False}, events[:2]),
        Connection(events[1]["id"], {"type": "hello", "user_id": USER,  # type: ignore[arg-type]
                                     "last_id": events[3]["id"], "recovered": True}, events[2:]),
    ])
    return expected, snapshot, [client]


def test_a_consistent_world_has_no_violations() -> None:
    assert invariants.check_all(*world()) == []


def test_a_refund_credited_twice_is_caught_even_when_the_balance_matches_its_ledger() -> None:
    expected, snapshot, clients = world()
    snapshot.ledger.append(LedgerRow(USER, "refund", D("7.00"), 1, "refund:1:again"))
    snapshot.balances[USER] = D("19.00")  # balance == ledger, but not what is owed
    problems = invariants.check_all(expected, snapshot, clients)
    assert any("credited 2 times" in p for p in problems), problems
    assert any("balance 19.00, expected 12.00" in p for p in problems), problems


def test_a_balance_off_its_ledger_is_caught() -> None:
    expected, snapshot, _clients = world()
    snapshot.balances[USER] = D("12.01")
    problems = invariants.check_balances(expected, snapshot)
    assert any("ledger entries sum to 12.00" in p for p in problems), problems


def test_a_regressed_terminal_status_and_a_wrong_refund_are_caught() -> None:
    expected, snapshot, _clients = world()
    snapshot.orders[2] = dataclasses.replace(snapshot.orders[2], status="Canceled",
                                             status_class="canceled", refunded=D("5.00"))
    problems = invariants.check_orders(expected, snapshot)
    assert any("status 'Canceled'" in p for p in problems), problems
    assert any("refunded 5.00, expected 0.00" in p for p in problems), problems


def test_websocket_gaps_duplicates_and_unseen_tails_are_caught() -> None:
    _expected, snapshot, clients = world()
    events = snapshot.events[USER]
    gap = clients[0].connections[1]
    gap.events = [events[2], events[4]]
    assert any("event #1" in p for p in invariants.check_clients(snapshot, clients))
    gap.events = [events[1], events[2], events[3], events[4]]  # replays one already seen
    assert invariants.check_clients(snapshot, clients)
    gap.events = events[2:4]  # the last connection never got the last event
    assert any("got 2 of the 3" in p for p in invariants.check_clients(snapshot, clients))


def test_not_recovered_connections_start_after_the_hello_last_id() -> None:
    _expected, snapshot, clients = world()
    events = snapshot.events[USER]
    clients[0].connections[1] = Connection(events[1]["id"], {  # type: ignore[arg-type]
        "type": "hello", "user_id": USER, "last_id": events[2]["id"], "recovered": False},
        events[3:])
    assert invariants.check_clients(snapshot, clients) == []
    clients[0].connections[1].events = events[4:]  # a gap after the hello
    assert invariants.check_clients(snapshot, clients)


def test_refund_rule_clamps_remains_and_rounds_down() -> None:
    assert refund_for("Partial", D("10.00"), 1000, 700) == D("7.00")
    assert refund_for("Partial", D("10.00"), 1000, -5) == D("0.00")
    assert refund_for("Partial", D("10.00"), 1000, 1050) == D("10.00")
    assert refund_for("Partial", D("0.03"), 2, 1) == D("0.01")
    assert refund_for("Canceled", D("3.33"), 7, 0) == D("3.33")
    assert refund_for("Completed", D("3.33"), 7, 7) == D("0.00")


def test_plans_are_reproducible_from_their_seed() -> None:
    assert make_plan(69, database_faults=True) == make_plan(69, database_faults=True)
    assert make_plan(69, database_faults=True) != make_plan(70, database_faults=True)


def campaign(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.campaign", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _require_postgresql() -> None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        unavailable(f"PostgreSQL unreachable: {exc}")


# Seeds 69 and 82 kill workers, the dispatcher and gateways, restart Redis (69: SIGTERM and
# SIGKILL; 82: SIGTERM), and serve unknown words, bad entries and all three reply faults.
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("seed", [69, 82])
def test_fixed_seeds_pass(database: str, seed: int) -> None:
    if database == "postgresql":
        _require_postgresql()
    done = campaign("--seed", str(seed), "--runs", "1", "--database", database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "campaign: 1 runs, 0 violations"
    assert re.search(rf"^seed {seed} {database} +orders +\d+ ", done.stdout, re.M)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_injected_violation_fails_the_campaign() -> None:
    done = campaign("--seed", "82", "--runs", "1", "--inject-violation")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ledger entries sum to" in done.stdout
    last = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"campaign: 1 runs, [1-9]\d* violations", last), last
