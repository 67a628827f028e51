"""Concurrent appliers of the same provider answer never credit twice (real processes)."""

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from paxyo.accounts import deposit, get_balance
from paxyo.ledger import ledger_mismatches
from paxyo.orders import NewOrder, place_order
from paxyo.store.engine import open_engine
from paxyo.store.schema import ledger_entries
from tests import race_apply

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def seed_orders(engine) -> None:
    deposit(engine, 111, Decimal("400.00"), "seed", 2)
    for oid in race_apply.ORDERS:
        place_order(engine, NewOrder(oid, 111, "sim", str(9000 + oid), 1000, Decimal("10.00")),
                    decimals=2, poll_interval=30)


@pytest.mark.parametrize("any_database_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_processes_and_threads_racing_credit_each_refund_once(any_database_url):
    engine = open_engine(any_database_url)
    seed_orders(engine)
    assert get_balance(engine, 111) == Decimal("0.00")
    start_at = time.time() + 3
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.race_apply", any_database_url, str(start_at), "3"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)]
    credited: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        credited.extend(int(x) for x in out.split())
    # every order changed exactly once across 4 processes x 3 threads
    assert sorted(credited) == list(race_apply.ORDERS)
    expected = Decimal("10.00") * 20 + Decimal("7.00") * 20
    assert get_balance(engine, 111) == expected
    with engine.connect() as conn:
        assert ledger_mismatches(conn) == []
        refunds = conn.execute(select(func.count()).select_from(ledger_entries)
                               .where(ledger_entries.c.kind == "refund")).scalar_one()
    assert refunds == 40
    engine.dispose()
