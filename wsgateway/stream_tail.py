"""Follow one Redis stream on a dedicated connection, handing each batch of entries to a callback.

Why not redis-py's client for the loop itself: the gateway's reader issues an XREAD every few
milliseconds for as long as it runs, and each one through redis-py's asyncio client (pool,
retry wrapper, response callbacks, a future and two task wake-ups) cost about three times the
CPU of this protocol, which keeps one XREAD outstanding, parses the reply with hiredis as
redis-py itself does, and is driven by the event loop's callbacks alone (no task, no future per
read). At low event rates that fixed cost per read was most of the gateway's CPU
(bench/gateway.py).

redis-py still opens the connection (``pool.connection_class`` with the pool's settings), so
URL options, TLS, AUTH and SELECT behave as for every other client of the process; once it
is ready this protocol takes over its transport. The connection speaks RESP2, where a server
sends nothing it was not asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis

log = logging.getLogger("wsgateway.stream_tail")

REPLY_GRACE = 5.0  # seconds past BLOCK an XREAD may take before the connection counts as dead
WATCHDOG_EVERY = 1.0

Entries = list[list[Any]]  # [[entry id, [field, value, ...]], ...] as bytes


class StreamTailError(ConnectionError):
    """The tail's connection failed, stopped answering, or Redis answered with an error."""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class StreamTail(asyncio.Protocol):
    """XREAD ``key`` from ``position`` onwards, forever, calling ``on_entries`` per batch.

    After a batch smaller than ``count`` the next XREAD waits ``batch_wait`` seconds, so that it
    carries more entries (perf-notes: entries per XREAD dominate CPU). ``on_entries`` runs in
    the event loop's callback and must not block.
    """

    def __init__(self, key: str, on_entries: Callable[[Entries], None], *, count: int,
                 block_ms: int, batch_wait: float, reply_grace: float = REPLY_GRACE,
                 watchdog_every: float = WATCHDOG_EVERY) -> None:
        self.key = key
        self.count = count
        self.block_ms = block_ms
        self.batch_wait = batch_wait
        self.reply_grace = reply_grace  # seconds past BLOCK before the connection counts as dead
        self.watchdog_every = watchdog_every
        self._on_entries = on_entries
        self._command = (b"*8\r\n" + _bulk(b"XREAD") + _bulk(b"COUNT") + _bulk(b"%d" % count)
                         + _bulk(b"BLOCK") + _bulk(b"%d" % block_ms) + _bulk(b"STREAMS")
                         + _bulk(key.encode()))
        self._position = b"0-0"
        self._transport: asyncio.Transport | None = None
        self._reader: hiredis.Reader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[None] | None = None
        self._next_read: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._sent_at: float | None = None  # loop time of the XREAD in flight

    @property
    def position(self) -> str:
        """The id of the last entry handed on (reads continue after it)."""
        return self._position.decode()

    async def follow(self, pool: aioredis.ConnectionPool, position: str) -> None:
        """Connect through ``pool``'s settings and read from after ``position`` until stopped.

        Returns when :meth:`close` is called; raises :class:`StreamTailError` (or the
        connection's own error) when the connection cannot be made, is lost or Redis errs.
        """
        self._position = position.encode()
        connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        await connection.connect()
        writer = getattr(connection, "_writer", None)  # redis-py's asyncio.StreamWriter
        if writer is None:
            await connection.disconnect()
            raise StreamTailError("this redis-py version hides its connection's transport")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._lost = loop.create_future()
        self._reader = hiredis.Reader()
        self._transport = writer.transport
        self._transport.set_protocol(self)
        try:
            self._read()
            self._watchdog = loop.call_later(self.watchdog_every, self._check_alive)
            await self._lost
        finally:
            self.close()
            # Lets redis-py forget the transport (it would warn about it when collected).
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    def close(self) -> None:
        """Stop reading and close the connection (idempotent)."""
        for handle in (self._next_read, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._next_read = self._watchdog = None
        self._sent_at = None
        if self._transport is not None:
            self._transport.abort()  # a blocked XREAD holds nothing worth flushing
            self._transport = None
        self._finish(None)

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                self._on_reply(reply)
        except hiredis.ProtocolError as exc:
            self._fail(StreamTailError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(StreamTailError(f"connection to Redis lost ({exc or 'closed by server'})"))

    # -- reading --------------------------------------------------------------------------------

    def _read(self) -> None:
        self._next_read = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        assert self._loop is not None
        self._sent_at = self._loop.time()
        transport.write(self._command + _bulk(self._position))

    def _on_reply(self, reply: Any) -> None:
        self._sent_at = None
        if isinstance(reply, hiredis.ReplyError):
            self._fail(StreamTailError(f"XREAD {self.key}: {reply}"))
            return
        entries: Entries = reply[0][1] if reply else []  # nil when BLOCK timed out
        if not entries:
            self._read()
            return
        self._position = entries[-1][0]
        try:
            self._on_entries(entries)
        except Exception:  # one bad batch must not stop the process's only reader
            log.exception("stream tail: handling entries up to %s failed", self.position)
        if len(entries) >= self.count:
            self._read()
        else:
            assert self._loop is not None
            self._next_read = self._loop.call_later(self.batch_wait, self._read)

    def _check_alive(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        sent_at = self._sent_at
        if sent_at is not None and now - sent_at > self.block_ms / 1000 + self.reply_grace:
            self._fail(StreamTailError(f"Redis did not answer XREAD within "
                                       f"{now - sent_at:.0f}s"))
            return
        self._watchdog = self._loop.call_later(self.watchdog_every, self._check_alive)

    def _fail(self, exc: Exception) -> None:
        self._finish(exc)  # first, so that close() does not end follow() without the error
        self.close()

    def _finish(self, exc: Exception | None) -> None:
        lost = self._lost
        if lost is not None and not lost.done():
            if exc is None:
                lost.set_result(None)
            else:
                lost.set_exception(exc)
        self._reader = None
