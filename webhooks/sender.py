"""The webhook sender: POSTs queued events to PAXYO_WEBHOOK_URL, signed, in order per user.

Each user's events form a chain: the sender claims a user's lowest pending event
(:mod:`paxyo.webhook_queue`), POSTs it, and on a 2xx deletes it and claims that user's next
one. Chains of different users run side by side, up to ``concurrency`` at once. A failed
attempt (any other status, a timeout, a refused connection) is rescheduled with exponential
backoff and full jitter and releases the user; after ``max_age`` seconds of failing, the event
is marked failed and the user's next event goes ahead. Any number of senders may run: a claim
is a lease in the database, so one event is in flight at one sender at a time.

A 2xx status line is a delivery; the answer's body is not read (a receiver that never ends it
cannot hold the event). Database calls run in daemon threads, so that on :meth:`stop` a call
that hangs (a locked or unreachable database) holds the sender no longer than the POST timeout
and :data:`STOP_GRACE`: its claim then runs out as after a crash, and the event is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitoring.metrics import Metrics
from paxyo import webhook_queue
from paxyo.events import event_id
from paxyo.webhook_queue import Delivery
from paxyo.webhook_signature import sign

log = logging.getLogger("paxyo.webhooks")

USER_AGENT = "paxyo-webhooks/1"
STOP_GRACE = 5.0  # seconds past the POST timeout that a stopping sender waits for its writes
DB_THREADS = 8    # database calls at once (within the engine's pool of 15)
MAX_LOGGED_ERROR = 200

T = TypeVar("T")


@dataclass(frozen=True)
class SenderConfig:
    url: str
    secret: str
    timeout: float = 10.0            # a 2xx within this many seconds is a delivery
    max_age: float = 86400.0         # retry for this long after the first attempt, then fail
    concurrency: int = 16            # users whose chains run at once in this process
    lease_seconds: float = 35.0      # a sender killed mid-delivery holds its claim this long
    poll_interval: float = 0.5       # how often to look for due events when idle
    backoff_first: float = 1.0       # the first retry waits up to this long ...
    backoff_cap: float = 600.0       # ... doubling up to this


def retry_delay(attempts: int, config: SenderConfig, rng: random.Random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (full jitter)."""
    ceiling = min(config.backoff_cap, config.backoff_first * 2 ** min(attempts - 1, 30))
    return rng.uniform(ceiling / 2, ceiling)


def new_sender_id() -> str:
    host = os.environ.get("DYNO") or socket.gethostname()
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


class WebhookSender:
    """Delivers the webhook queue until :meth:`stop`; see the module docstring."""

    def __init__(self, engine: Engine, config: SenderConfig, metrics: Metrics | None = None,
                 *, clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 sender_id: str | None = None) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.sender_id = sender_id or new_sender_id()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._db_slots = asyncio.Semaphore(DB_THREADS)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _now(self) -> datetime:
        return _utc(self.clock())

    async def run(self) -> None:
        """Deliver until stopped; then let the POSTs in flight finish (see the module doc)."""
        chains: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        async with aiohttp.ClientSession(  # cookies a receiver sets are neither kept nor sent
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT}) as session:
            claiming = asyncio.create_task(self._claim_loop(session, chains))
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({claiming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            self.stop()  # also when the claim loop failed
            deadline = time.monotonic() + self.config.timeout + STOP_GRACE
            await asyncio.wait({claiming, stopping}, timeout=deadline - time.monotonic())
            if chains:
                await asyncio.wait(set(chains), timeout=max(0.0, deadline - time.monotonic()))
            unfinished = [t for t in (claiming, *chains) if not t.done()]
            if unfinished:
                log.warning("webhooks: stopping with %d database call(s) unanswered; their "
                            "events are sent again when the claims run out", len(unfinished))
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
        if not claiming.cancelled():
            claiming.result()  # a claim loop that failed fails the sender

    async def _claim_loop(self, session: aiohttp.ClientSession,
                          chains: set[asyncio.Task[None]]) -> None:
        db_down = False
        while not self._stopping.is_set():
            free = self.config.concurrency - len(chains)
            claimed: list[Delivery] = []
            if free > 0:
                try:
                    claimed = await self._db(
                        webhook_queue.claim_due, self.engine, self.sender_id,
                        clock=self._now, lease_seconds=self.config.lease_seconds, limit=free)
                    if db_down:
                        log.info("webhooks: database reachable again")
                        db_down = False
                except SQLAlchemyError as exc:
                    if not db_down:
                        log.error("webhooks: database unreachable, retrying: %s",
                                  _first_line(exc))
                        db_down = True
            if claimed and self._stopping.is_set():  # the claim was answered after stop()
                await self._release(claimed)
                return
            for delivery in claimed:
                task = asyncio.create_task(self._chain(session, delivery))
                chains.add(task)
                task.add_done_callback(chains.discard)
                task.add_done_callback(lambda _t: self._wake.set())
            if claimed and len(claimed) == free:
                continue  # more may be due: look again at once
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)

    async def _release(self, claimed: list[Delivery]) -> None:
        with contextlib.suppress(SQLAlchemyError):  # else the claims run out
            await self._db(webhook_queue.release, self.engine,
                           [d.event_id for d in claimed], self.sender_id)

    async def _db(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a daemon thread (see the module docstring)."""
        async with self._db_slots:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()

            def settle(result: Any, error: BaseException | None) -> None:
                if future.done():
                    return  # the caller stopped waiting
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

            def work() -> None:
                try:
                    outcome: tuple[Any, BaseException | None] = (fn(*args, **kwargs), None)
                except BaseException as exc:  # handed to the awaiting task
                    outcome = (None, exc)
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(settle, *outcome)

            threading.Thread(target=work, name="paxyo-webhooks-db", daemon=True).start()
            return await future

    async def _chain(self, session: aiohttp.ClientSession, delivery: Delivery | None) -> None:
        """Deliver one user's events in order while they are due and answered with 2xx."""
        while delivery is not None:
            try:
                if not await self._attempt(session, delivery):
                    return
                if self._stopping.is_set():
                    return
                delivery = await self._db(
                    webhook_queue.claim_next, self.engine, self.sender_id, delivery.user_id,
                    clock=self._now, lease_seconds=self.config.lease_seconds)
            except SQLAlchemyError as exc:
                # the lease runs out and the event is sent again: at least once, in order
                log.error("webhooks: event %s: database error, left for retry: %s",
                          event_id(delivery.event_id), _first_line(exc))
                return
            except Exception:
                log.exception("webhooks: event %s: unexpected error, left for retry",
                              event_id(delivery.event_id))
                return

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> bool:
        """POST one event; True when it was delivered (2xx in time)."""
        ident = event_id(delivery.event_id)
        headers = {"Content-Type": "application/json", "Paxyo-Event-Id": ident,
                   "Paxyo-Signature": sign(self.config.secret, delivery.body,
                                           int(self.clock()))}
        try:
            async with session.post(self.config.url, data=delivery.body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                                    allow_redirects=False) as response:
                status = response.status  # the body is not read (nor waited for)
        except TimeoutError:
            return await self._failed(delivery, "timeout",
                                      f"no answer within {self.config.timeout:g}s")
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a host IDNA refuses
            return await self._failed(delivery, "connection_error", _describe(exc))
        if 200 <= status < 300:
            await self._db(webhook_queue.mark_delivered, self.engine, delivery,
                           self.sender_id, clock=self._now)
            self._count("delivered")
            return True
        return await self._failed(delivery, "http_error", f"HTTP {status}")

    async def _failed(self, delivery: Delivery, outcome: str, error: str) -> bool:
        now = self._now()
        attempts = delivery.attempts + 1
        first = delivery.first_attempt_at or now
        give_up = (now - first).total_seconds() >= self.config.max_age
        retry_at = None if give_up else now + timedelta(
            seconds=retry_delay(attempts, self.config, self.rng))
        await self._db(webhook_queue.mark_attempt_failed, self.engine, delivery,
                       self.sender_id, error=error, now=now, retry_at=retry_at)
        self._count(outcome)
        ident = event_id(delivery.event_id)
        if give_up:
            self._count("failed")
            log.error("webhooks: event %s failed after %d attempts over %s: %s; "
                      "`paxyo webhooks retry %s` sends it again",
                      ident, attempts, now - first, error, ident)
        else:
            log.warning("webhooks: event %s attempt %d: %s; next in %.0fs",
                        ident, attempts, error, (retry_at - now).total_seconds())
        return False

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(outcome).inc()


def _describe(exc: aiohttp.ClientError | ValueError) -> str:
    """One line for a failed POST, without the URL (its query or password may be secret)."""
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer could not be read
        text = f"{exc.status}, {exc.message}"
    elif isinstance(exc, aiohttp.InvalidURL | ValueError):
        text = "the URL was refused"
    else:
        text = str(exc)
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:webhook_queue.MAX_ERROR]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:MAX_LOGGED_ERROR]
