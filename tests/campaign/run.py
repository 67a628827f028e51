"""One campaign run: start everything, play the plan under faults, stop the faults, wait for
the system to settle, then check the invariants."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

from paxyo.store.schema import accounts
from tests.campaign import invariants
from tests.campaign.clients import Api, CallFailed, SocketClient
from tests.campaign.databases import RunDatabase, snapshot
from tests.campaign.faults import FaultRunner
from tests.campaign.invariants import Expected, ExpectedOrder
from tests.campaign.processes import POLL_INTERVAL, ProcessSet
from tests.campaign.scenario import Deposit, OrderPlan, Plan, make_plan

SETTLE_SECONDS = 60.0        # the bound: every order settles this soon after the faults stop
REGRESSION_HOLD = 2 * POLL_INTERVAL  # a regression is served this long before the checks
CONNECT_TIMEOUT = 15.0
WATCH_EVERY = 0.25


@dataclass
class RunResult:
    seed: int
    database: str
    orders: int = 0
    refunds: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float | None = None  # faults stopped -> everything settled
    kept_dir: str | None = None

    @property
    def faults(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind.startswith("fault:"))

    @property
    def kills(self) -> int:
        return sum(self.counts[k] for k in ("kill_worker", "kill_dispatcher", "kill_gateway"))

    @property
    def restarts(self) -> int:
        return self.counts["redis_term"] + self.counts["redis_kill"]


def run_once(seed: int, kind: str, *, inject_violation: bool = False,
             keep: bool = False) -> RunResult:
    """One run, start to verdict; never raises (a harness error is reported as a violation)."""
    started = time.monotonic()
    result = RunResult(seed, kind)
    run_dir = Path(tempfile.mkdtemp(prefix=f"paxyo-campaign-{seed}-"))
    database = RunDatabase(kind, run_dir)
    processes: ProcessSet | None = None
    try:
        database.create()
        processes = ProcessSet(run_dir, database.url, seed)
        processes.start_all()
        result.counts["start_ms"] += int((time.monotonic() - started) * 1000)
        asyncio.run(Run(make_plan(seed, database_faults=database.can_kill_backends), database,
                        processes, result, inject_violation).play())
    except Exception as exc:  # the harness itself failed: say so, count it
        result.violations.append(f"campaign error: {type(exc).__name__}: {exc}")
    finally:
        if processes is not None:
            processes.stop_all()
            result.violations += [f"process death: {d}" for d in processes.deaths]
        with contextlib.suppress(Exception):
            database.drop()
    if result.violations or keep:
        result.kept_dir = str(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


class Run:
    def __init__(self, plan: Plan, database: RunDatabase, processes: ProcessSet,
                 result: RunResult, inject_violation: bool) -> None:
        self.plan = plan
        self.database = database
        self.processes = processes
        self.result = result
        self.inject_violation = inject_violation
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.deposited: dict[int, Decimal] = {}
        self.accepted: dict[int, OrderPlan] = {}
        self.refused: set[int] = set()
        self.regressed_at: dict[int, float] = {}
        self.counts = result.counts

    async def play(self) -> None:
        async with aiohttp.ClientSession() as session:
            gateways = [self.processes.gateway_url(n)
                        for n in range(len(self.processes.gateway_ports))]
            self.api = Api(session, gateways, self.processes.sim_url, self.rng)
            self.clients = {user: SocketClient(session, user,
                                               lambda: self.processes.gateway_ports, self.rng)
                            for user in self.plan.users}
            self.fault_runner = FaultRunner(self.processes, self.database, self.api,
                                            self.clients, self.rng)
            await self._prepare()
            background = [asyncio.create_task(self._supervise()),
                          asyncio.create_task(self._watch_regressions())]
            try:
                await self._fault_phase()
                await self._settle()
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                for client in self.clients.values():
                    await client.stop()
            self.processes.supervise()
            await self._check()

    # -- phases ---------------------------------------------------------------------------

    async def _prepare(self) -> None:
        await self.api.sim("/sim/orders", {"orders": [
            {"id": o.provider_order_id, "status": "Pending", "remains": o.quantity,
             "quantity": o.quantity} for o in self.plan.orders]})
        for deposit in self.plan.deposits:
            if deposit.at < 0:
                await self._deposit(deposit)
        for client in self.clients.values():
            client.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not all(c.connected for c in self.clients.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("WebSocket clients did not connect")
            await asyncio.sleep(0.05)

    async def _fault_phase(self) -> None:
        self.t0 = time.monotonic()
        tasks = [asyncio.create_task(self._order(o)) for o in self.plan.orders]
        tasks += [asyncio.create_task(self._deposit(d)) for d in self.plan.deposits if d.at >= 0]
        tasks.append(asyncio.create_task(self._faults()))
        await self._until(self.plan.fault_seconds)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, CallFailed):
                self.result.violations.append(f"API: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome
        await self.fault_runner.stop_faults()
        await self._release_held_orders()
        self.fault_end = time.monotonic()

    async def _settle(self) -> None:
        """Until every order is terminal, every event published and seen by its client, and
        every regression served for a while; at most SETTLE_SECONDS."""
        deadline = self.fault_end + SETTLE_SECONDS
        while True:
            pending = await asyncio.to_thread(self._unsettled)
            if not pending:
                break
            if time.monotonic() > deadline:
                self.result.violations += [f"not settled {SETTLE_SECONDS:.0f} s after the "
                                           f"faults stopped: {p}" for p in pending]
                return
            await asyncio.sleep(0.2)
        self.result.settle_seconds = time.monotonic() - self.fault_end

    def _unsettled(self) -> list[str]:
        pending = []
        states = self.database.order_states()
        for order in self.accepted.values():
            status, status_class = states.get(order.id, ("(missing)", "open"))
            if status_class not in invariants.TERMINAL_CLASSES:
                pending.append(f"order {order.id} is {status!r} ({status_class}); provider "
                               f"serves {order.final.body}")
            elif order.regression is not None and (
                    order.id not in self.regressed_at
                    or time.monotonic() - self.regressed_at[order.id] < REGRESSION_HOLD):
                pending.append(f"order {order.id}: regression not yet served long enough")
        unpublished = self.database.unpublished()
        if unpublished:
            pending.append(f"{unpublished} outbox events unpublished")
        if pending:
            return pending
        latest = self._latest_event_ids()
        for user, client in self.clients.items():
            if not client.connected or client.last_id != latest.get(user):
                pending.append(f"user {user}: WebSocket client at {client.last_id}, latest "
                               f"event {latest.get(user)} (connected: {client.connected})")
        return pending

    def _latest_event_ids(self) -> dict[int, str]:
        rows = self.database.read()["outbox"]
        return {row.user_id: str(row.id).zfill(16) for row in rows}

    # -- actions --------------------------------------------------------------------------

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))

    async def _deposit(self, deposit: Deposit) -> None:
        if deposit.at >= 0:
            await self._until(deposit.at)
        body = {"amount": str(deposit.amount), "reference": deposit.reference}
        path = f"/v1/accounts/{deposit.user_id}/deposits"
        for attempt in range(1 + deposit.repeats):
            status, reply = await self.api.v1("POST", path, body)
            if status not in (200, 201):
                raise CallFailed(f"deposit {body} for user {deposit.user_id}: {status} {reply}")
            if attempt == 0:
                self.deposited[deposit.user_id] = (
                    self.deposited.get(deposit.user_id, Decimal(0)) + deposit.amount)
        self.counts["deposits"] += 1

    async def _order(self, order: OrderPlan) -> None:
        await self._until(order.placed_at)
        status, reply = await self.api.v1("POST", "/v1/orders", {
            "id": order.id, "user_id": order.user_id, "provider": "sim",
            "provider_order_id": order.provider_order_id, "quantity": order.quantity,
            "charge": str(order.charge), "service": 1, "link": f"https://example.com/{order.id}"})
        if status == 409 and "balance" in str(reply).lower():
            self.refused.add(order.id)
            self.counts["orders_refused"] += 1
            return
        if status not in (200, 201):
            raise CallFailed(f"order {order.id}: {status} {reply}")
        self.accepted[order.id] = order
        if order.glitch:
            self.counts[f"fault:{order.glitch}"] += 1
        for step in order.steps:
            await self._until(step.at)
            await self.api.sim(f"/sim/orders/{order.provider_order_id}", step.body)
        if order.final.at is not None:
            await self._until(order.final.at)
            await self.api.sim(f"/sim/orders/{order.provider_order_id}", order.final.body)

    async def _faults(self) -> None:
        for fault in self.plan.faults:
            await self._until(fault.at)
            await self.fault_runner.apply(fault)

    async def _release_held_orders(self) -> None:
        """The fault phase is over: held orders get their real final status, reply faults go."""
        for order in self.accepted.values():
            body: dict[str, Any] = {}
            if order.final.at is None:
                body.update(order.final.body)
            if order.glitch and order.glitch.startswith("reply_"):
                body["reply"] = None
            if body:
                await self.api.sim(f"/sim/orders/{order.provider_order_id}", body)

    async def _supervise(self) -> None:
        while True:
            await asyncio.to_thread(self.processes.supervise)
            await asyncio.sleep(WATCH_EVERY)

    async def _watch_regressions(self) -> None:
        """Once the system has recorded an order's terminal status, serve its regression."""
        while True:
            states = await asyncio.to_thread(self.database.order_states)
            for order in list(self.accepted.values()):
                if order.regression is None or order.id in self.regressed_at:
                    continue
                if states.get(order.id, ("", "open"))[1] in invariants.TERMINAL_CLASSES:
                    await self.api.sim(f"/sim/orders/{order.provider_order_id}",
                                       order.regression)
                    self.regressed_at[order.id] = time.monotonic()
                    self.counts["fault:regression"] += 1
            await asyncio.sleep(WATCH_EVERY)

    # -- verdict --------------------------------------------------------------------------

    async def _check(self) -> None:
        if self.inject_violation:  # prove the checks can fail: a balance moved off the ledger
            await asyncio.to_thread(self._move_money_off_the_ledger)
        rows = await asyncio.to_thread(self.database.read)
        store = snapshot(rows)
        expected = self._expected()
        violations = invariants.check_all(expected, store,
                                          [c.log for c in self.clients.values()])
        violations += await self._check_http(expected, store)
        self.result.violations += violations
        self.result.orders = len(self.accepted)
        self.result.refunds = sum(1 for o in expected.orders.values() if o.refund > 0)
        await self._count(store)

    def _expected(self) -> Expected:
        return Expected(
            deposits=dict(self.deposited),
            orders={o.id: ExpectedOrder(o.id, o.user_id, o.charge, o.quantity, o.final.name,
                                        o.final.parsed_remains, o.expected_refund())
                    for o in self.accepted.values()},
            refused_orders=set(self.refused))

    def _move_money_off_the_ledger(self) -> None:
        assert self.database.engine is not None
        with self.database.engine.begin() as conn:
            conn.execute(sa.update(accounts).where(accounts.c.user_id == self.plan.users[0])
                         .values(balance=accounts.c.balance + Decimal("0.01")))

    async def _check_http(self, expected: Expected, store: invariants.Snapshot) -> list[str]:
        """What the panel reads over /v1 agrees with the store."""
        problems = []
        for user in self.plan.users:
            status, reply = await self.api.v1("GET", f"/v1/accounts/{user}")
            if status == 200 and Decimal(reply["balance"]) != store.balances.get(user):
                problems.append(f"GET /v1/accounts/{user}: balance {reply['balance']}, "
                                f"store {store.balances.get(user)}")
        for order in expected.orders.values():
            status, reply = await self.api.v1("GET", f"/v1/orders/{order.id}")
            if status != 200 or (reply["status"], Decimal(reply["refunded"])) != (
                    order.status, order.refund):
                problems.append(f"GET /v1/orders/{order.id}: {status} {reply}, expected "
                                f"{order.status} refunded {order.refund}")
        return problems

    async def _count(self, store: invariants.Snapshot) -> None:
        stats = await self.api.sim_stats()
        self.counts["provider_status_calls"] += stats.get("status_requests", 0)
        for kind, n in stats.get("faults", {}).items():
            self.counts[f"fault:sim_{kind}"] += n
        self.counts.update(self.fault_runner.counts)
        self.counts["api_retries"] += self.api.retries
        self.counts["api_5xx"] += len(self.api.server_errors)
        self.counts["process_starts"] += sum(m.starts for m in self.processes.processes.values())
        self.counts["events"] += sum(len(e) for e in store.events.values())
        for client in self.clients.values():
            greeted = [c for c in client.log.connections if c.hello is not None]
            self.counts["ws_connections"] += len(greeted)
            self.counts["ws_resumed"] += sum(1 for c in greeted if c.hello.get("recovered"))
            self.counts["ws_not_recovered_after_last_id"] += sum(
                1 for c in greeted if c.sent_last_id and not c.hello.get("recovered"))
