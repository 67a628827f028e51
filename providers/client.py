"""Async client for one provider's SMM panel API v2 endpoint.

Every request is a form POST to the configured URL with ``key`` and ``action``. The body is
read whatever the HTTP status, then sorted into one of three results:

- a parsed reply (``ok``);
- :class:`~providers.replies.ProviderErrorReply` for a JSON ``{"error": ...}``: the provider
  refused, so it is raised at once and never retried (``error_reply``);
- a transient failure: network error, timeout, HTTP 5xx, HTTP 429, or a body that is not JSON
  (HTML page, empty). Idempotent actions (status, cancel, balance, services) retry these with
  exponential jitter; ``add`` never does, because a request that timed out may have placed
  the order. When the attempts run out, :class:`ProviderUnavailable` is raised.

Only our own transient exception type is retried, so cancellation, job timeouts and
programming errors pass straight through.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import aiohttp
from prometheus_client import Counter, Histogram
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

import providers.replies as replies
from paxyo.settings import ProviderConfig
from paxyo.status_entries import EntryError, StatusEntry, StatusMap
from providers.replies import ProviderErrorReply, ReplyError

log = logging.getLogger("paxyo.providers")

MAX_IDS_PER_REQUEST = 100  # the documented limit for "orders=" lists

T = TypeVar("T")


class ProviderMetrics(Protocol):
    """Where a client counts its requests (monitoring.metrics.Metrics is one)."""

    provider_requests: Counter      # labels: provider, action, outcome
    provider_latency: Histogram     # labels: provider, action
    provider_bad_entries: Counter   # labels: provider, reason


class ProviderUnavailable(Exception):
    """A request failed transiently and will not be retried (any more).

    ``partial`` holds what the other chunks of a multi-chunk call returned, if anything.
    """

    def __init__(self, message: str, *, partial: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial: dict[str, Any] = dict(partial or {})


class _TransientFailure(Exception):
    """One attempt failed in a way that may succeed when repeated."""

    def __init__(self, outcome: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.retry_after = retry_after


class ProviderClient:
    """Calls one provider; safe to share between tasks of one event loop."""

    def __init__(
        self,
        config: ProviderConfig,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 20.0,
        attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        metrics: ProviderMetrics | None = None,
        chunk_size: int = MAX_IDS_PER_REQUEST,
        chunk_concurrency: int = 4,
    ) -> None:
        if not 1 <= chunk_size <= MAX_IDS_PER_REQUEST:
            raise ValueError(f"chunk_size must be 1..{MAX_IDS_PER_REQUEST}, got {chunk_size}")
        if attempts < 1 or chunk_concurrency < 1:
            raise ValueError("attempts and chunk_concurrency must be at least 1")
        self.config = config
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.attempts = attempts
        self.backoff_max = backoff_max
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.chunk_concurrency = chunk_concurrency
        self._backoff = wait_random_exponential(multiplier=backoff_initial, max=backoff_max)

    async def status_many(self, ids: Sequence[str]) -> StatusMap:
        """Statuses of many orders, asked in chunks of at most 100 ids.

        Requested ids missing from the reply are missing from the result ("no change").
        Chunks run concurrently (at most ``chunk_concurrency``). If any chunk fails, the first
        failure is raised; a :class:`ProviderUnavailable` then carries the entries of the
        chunks that succeeded in ``partial``. Workers pass at most 100 ids, i.e. one chunk.
        """
        return await self._in_chunks(ids, self._status_chunk)

    async def status(self, order_id: str) -> StatusEntry:
        """Status of one order (``order=ID``); an unknown id raises ProviderErrorReply."""
        entry = await self._call("status", {"order": str(order_id)}, replies.parse_single_status)
        self._count_bad_entries({str(order_id): entry})
        return entry

    async def add(self, service: int | str, link: str, quantity: int, **extra: Any) -> str:
        """Place an order and return the provider's order id. Never retried."""
        fields = {"service": service, "link": link, "quantity": quantity, **extra}
        return await self._call("add", fields, replies.parse_add, retry=False)

    async def cancel(self, ids: Sequence[str]) -> dict[str, bool | str]:
        """Ask to cancel orders: id -> True (accepted) or the provider's error text."""

        async def cancel_chunk(chunk: list[str]) -> dict[str, bool | str]:
            return await self._call("cancel", {"orders": ",".join(chunk)}, replies.parse_cancel)

        return await self._in_chunks(ids, cancel_chunk)

    async def balance(self) -> tuple[Decimal, str | None]:
        """The account balance and its currency."""
        return await self._call("balance", {}, replies.parse_balance)

    async def services(self) -> list[dict[str, Any]]:
        """The provider's service list, entries as given."""
        return await self._call("services", {}, replies.parse_services)

    async def _status_chunk(self, chunk: list[str]) -> StatusMap:
        entries = await self._call(
            "status",
            {"orders": ",".join(chunk)},
            lambda body: replies.parse_multi_status(body, chunk),
        )
        self._count_bad_entries(entries)
        return entries

    async def _in_chunks(
        self, ids: Sequence[str], fetch: Callable[[list[str]], Awaitable[dict[str, T]]]
    ) -> dict[str, T]:
        unique = list(dict.fromkeys(str(order_id).strip() for order_id in ids))
        chunks = [unique[i : i + self.chunk_size] for i in range(0, len(unique), self.chunk_size)]
        if len(chunks) <= 1:
            return await fetch(chunks[0]) if chunks else {}
        semaphore = asyncio.Semaphore(self.chunk_concurrency)

        async def bounded(chunk: list[str]) -> dict[str, T]:
            async with semaphore:
                return await fetch(chunk)

        outcomes = await asyncio.gather(*map(bounded, chunks), return_exceptions=True)
        merged: dict[str, T] = {}
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        for outcome in outcomes:
            if not isinstance(outcome, BaseException):
                merged.update(outcome)
        if failures:
            if isinstance(failures[0], ProviderUnavailable):
                failures[0].partial = dict(merged)
            raise failures[0]
        return merged

    async def _call(
        self,
        action: str,
        fields: Mapping[str, Any],
        parse: Callable[[bytes], T],
        *,
        retry: bool = True,
    ) -> T:
        form = {"key": self.config.key, "action": action}
        form.update({name: str(value) for name, value in fields.items() if value is not None})
        attempts = self.attempts if retry else 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_TransientFailure),
            before_sleep=functools.partial(self._log_retry, action),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(action, form, parse)
        except _TransientFailure as exc:
            unknown = "" if retry else "; not retried, the outcome is unknown"
            log.warning(
                "provider %s %s failed after %d attempt(s) (%s): %s%s",
                self.config.name, action, attempts, exc.outcome, exc, unknown,
            )
            raise ProviderUnavailable(
                f"provider {self.config.name} {action}: {exc.outcome}: {exc}{unknown}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, action: str, form: dict[str, str], parse: Callable[[bytes], T]) -> T:
        started = time.perf_counter()
        try:
            result = await self._post_and_parse(form, parse)
        except _TransientFailure as exc:
            self._observe(action, exc.outcome, started)
            raise
        except ProviderErrorReply as exc:
            self._observe(action, "error_reply", started)
            log.warning("provider %s %s refused: %s", self.config.name, action, exc.message)
            raise
        self._observe(action, "ok", started)
        return result

    async def _post_and_parse(self, form: dict[str, str], parse: Callable[[bytes], T]) -> T:
        try:
            async with self.session.post(self.config.url, data=form, timeout=self.timeout) as resp:
                body = await resp.read()
                http_status = resp.status
                retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise _TransientFailure("timeout", f"no reply within {self.timeout.total}s") from exc
        except aiohttp.ClientError as exc:
            raise _TransientFailure("network", f"{type(exc).__name__}: {exc}") from exc
        snippet = replies.body_snippet(body)
        if http_status == 429:
            raise _TransientFailure(
                "rate_limited", f"HTTP 429: {snippet!r}", retry_after=retry_after
            )
        if http_status >= 500:
            raise _TransientFailure("http_5xx", f"HTTP {http_status}: {snippet!r}")
        try:
            return parse(body)
        except ReplyError as exc:
            raise _TransientFailure("bad_reply", f"HTTP {http_status}: {exc}") from exc

    def _wait(self, state: RetryCallState) -> float:
        delay = self._backoff(state)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _TransientFailure) and failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, self.backoff_max))
        return delay

    def _log_retry(self, action: str, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        outcome = getattr(failure, "outcome", "error")
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "provider %s %s attempt %d/%d failed (%s): %s; retrying in %.2fs",
            self.config.name, action, state.attempt_number, self.attempts, outcome, failure,
            delay,
        )

    def _observe(self, action: str, outcome: str, started: float) -> None:
        if self.metrics is None:
            return
        name = self.config.name
        self.metrics.provider_requests.labels(name, action, outcome).inc()
        self.metrics.provider_latency.labels(name, action).observe(time.perf_counter() - started)

    def _count_bad_entries(self, entries: Mapping[str, StatusEntry | EntryError]) -> None:
        if self.metrics is None:
            return
        for entry in entries.values():
            if isinstance(entry, EntryError):
                reason = entry.kind
            elif entry.remains is None:
                reason = "bad_remains"
            else:
                continue
            self.metrics.provider_bad_entries.labels(self.config.name, reason).inc()


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds when given as a number (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)
