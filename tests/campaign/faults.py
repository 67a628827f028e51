"""Carrying out a plan's faults: SIGKILL and restart of workers, the dispatcher and gateways,
Redis restarts (SIGTERM or SIGKILL, same port, same append-only file), database backends
terminated mid-transaction, simulator fault rates, and WebSocket clients dropped."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from tests.campaign.clients import Api, SocketClient
from tests.campaign.databases import RunDatabase
from tests.campaign.processes import ProcessSet
from tests.campaign.scenario import Fault

QUIET = {"latency_ms": 0, "error_rate": 0, "html_rate": 0, "timeout_rate": 0,
         "rate_limit_per_min": 0}


class FaultRunner:
    def __init__(self, processes: ProcessSet, database: RunDatabase, api: Api,
                 clients: dict[int, SocketClient], rng: random.Random) -> None:
        self.processes = processes
        self.database = database
        self.api = api
        self.clients = clients
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self._downtimes: set[asyncio.Task[None]] = set()

    async def apply(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "simulator":
            await self.api.sim("/sim/faults", fault.settings)
            self.counts["simulator_faults_set"] += 1
        elif kind in ("kill_worker", "kill_gateway", "kill_dispatcher"):
            name = kind.removeprefix("kill_")
            name = name if name == "dispatcher" else f"{name}-{fault.target}"
            if self.processes.processes[name].expected_down:
                return  # already down: one kill at a time per process
            self.processes.kill(name)
            self.counts[kind] += 1
            self._down_for(fault.down_for, lambda: self.processes.restart(name))
        elif kind in ("redis_term", "redis_kill"):
            if not self.processes.redis_up():
                return
            await asyncio.to_thread(self.processes.stop_redis, kind == "redis_kill")
            self.counts[kind] += 1
            self._down_for(fault.down_for, self.processes.start_redis)
        elif kind == "db_kill" and self.database.can_kill_backends:
            killed, busy = await asyncio.to_thread(self.database.kill_backends, self.rng,
                                                   fault.target)
            self.counts["db_backends_killed"] += killed
            self.counts["db_backends_killed_busy"] += busy
        elif kind == "client_reconnect":
            await self.clients[fault.target].drop()
            self.counts["client_drops"] += 1

    def _down_for(self, seconds: float, restart) -> None:  # type: ignore[no-untyped-def]
        async def later() -> None:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(restart)
            self.counts["brought_back"] += 1

        task = asyncio.create_task(later())
        self._downtimes.add(task)
        task.add_done_callback(self._downtimes.discard)

    async def stop_faults(self) -> None:
        """End of the fault phase: quiet simulator, everything back up."""
        await asyncio.gather(*self._downtimes)
        await asyncio.to_thread(self.processes.start_redis)
        for name, managed in self.processes.processes.items():
            if managed.expected_down:
                await asyncio.to_thread(self.processes.restart, name)
        await self.api.sim("/sim/faults", QUIET)
