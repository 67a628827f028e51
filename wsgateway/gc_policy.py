"""When the gateway's process runs a full garbage collection.

CPython 3.11 runs one when the objects promoted to the oldest generation since the last one
exceed a quarter of it. In a gateway most promotions are not garbage (while aiohttp read the
sockets, every socket's read waiter was renewed by each pong and freed by reference counting;
now per-event objects are). So at 10k sockets a full
collection, which visits every socket's objects and stops every delivery for 0.4-0.9 s on the
2-core benchmark machine, came every few minutes (bench/gateway.py: p99 231 ms at 10k clients
and 12,500 events/s).

The cyclic garbage of a gateway comes from closed connections. Here the young generations are
still collected automatically, and a full collection runs when the connections closed since the
last one reach a quarter of those open (at least ``MIN_CLOSED``), or after ``MAX_INTERVAL``.
A connect storm (clients of a stopped gateway arriving) therefore causes no full collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from wsgateway.tasks import cancel_and_wait

log = logging.getLogger("wsgateway.gc")

MIN_CLOSED = 1000  # closed connections that always justify a full collection
MAX_INTERVAL = 600.0  # seconds: other cyclic garbage is collected at least this often
CHECK_EVERY = 1.0  # seconds between checks
NEVER = 2**31 - 1  # an oldest-generation threshold that automatic collection never reaches


class FullCollectionPolicy:
    """Counts closed connections and runs the full collection when they warrant it."""

    def __init__(self, *, min_closed: int = MIN_CLOSED, max_interval: float = MAX_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 collect: Callable[[int], int] = gc.collect) -> None:
        self.min_closed = min_closed
        self.max_interval = max_interval
        self._clock = clock
        self._collect = collect
        self._closed = 0
        self._last = clock()
        self._saved_threshold: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Stop automatic full collections (young generations keep theirs)."""
        if self._saved_threshold is None:
            self._saved_threshold = gc.get_threshold()
            young, middle, _ = self._saved_threshold
            gc.set_threshold(young, middle, NEVER)

    def uninstall(self) -> None:
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def connection_closed(self) -> None:
        self._closed += 1

    def maybe_collect(self, open_connections: int) -> bool:
        """Run a full collection if enough connections closed or it is overdue."""
        now = self._clock()
        if (self._closed < max(self.min_closed, open_connections // 4)
                and now - self._last < self.max_interval):
            return False
        closed, self._closed = self._closed, 0
        started = time.perf_counter()
        freed = self._collect(2)
        self._last = self._clock()
        log.info("gc: full collection after %d closed connections took %.0f ms, freed %d "
                 "objects", closed, (time.perf_counter() - started) * 1000, freed)
        return True

    def start(self, open_connections: Callable[[], int], every: float = CHECK_EVERY) -> None:
        """Install, then check every ``every`` seconds until :meth:`stop`."""
        if self._task is None:
            self.install()
            self._task = asyncio.create_task(self._run(open_connections, every),
                                             name="ws-gc-policy")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self.uninstall()

    async def _run(self, open_connections: Callable[[], int], every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.maybe_collect(open_connections())
