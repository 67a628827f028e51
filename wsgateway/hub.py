"""One Redis stream reader per process, routing each event to its user's sockets.

Concurrency and lifecycle:

- :class:`Hub` follows the global event stream with one :class:`StreamTail` (a single XREAD
  connection, ``BLOCK``, up to ``READ_COUNT`` entries) and hands each entry to the
  :class:`Subscriber`s of its user. There is never a Redis connection or an XREAD per socket.
  After a part-full batch the next XREAD waits ``BATCH_WAIT`` seconds so it carries more
  entries (perf-notes: events per XREAD dominate CPU). Each outbox id is routed once even if
  the stream carries it twice (a repeat publish after a crash): the hub remembers at least
  the last ``SEEN_IDS`` ids.
- Each socket is one :class:`Subscriber`, which is also the socket's protocol once the /ws
  handler has taken the socket over from aiohttp (:mod:`wsgateway.connection`): no task,
  future or coroutine per open socket, and it unsubscribes itself when the socket closes.
- Routing never awaits: each event's frame is written straight to its sockets' transports.
  A client that stops reading cannot stall the others; once its unsent output passes
  ``WRITE_BUFFER_LIMIT`` it is closed with 4008 TOO_SLOW and resumes after reconnecting.
- A new subscriber starts in replay mode: live events are held back while the WebSocket handler
  sends the history. Then only stream entries after the one that was last when the history was
  read are delivered (and never an id the replay carried): no gap and no duplicate, also for
  events that arrive during the replay or that this hub's reader routes late.
- Payloads are forwarded as stored (decoded once per event, never re-encoded).
- One :class:`~wsgateway.heartbeat.Heartbeat` pings every socket and drops dead peers, and a
  :class:`~wsgateway.gc_policy.FullCollectionPolicy` times full garbage collections by
  connections closed rather than by objects promoted.
- If Redis drops, the reader logs, backs off and resumes from the last id it read.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from monitoring.metrics import Metrics
from paxyo.keys import Keys
from wsgateway.close_codes import CloseCode, reason
from wsgateway.connection import CLOSE_TIMEOUT, Connection
from wsgateway.gc_policy import FullCollectionPolicy
from wsgateway.heartbeat import PING_FRAME, Heartbeat
from wsgateway.stream_tail import StreamTail

log = logging.getLogger("wsgateway.hub")

HOLD_LIMIT = 256  # live events held for one socket during its replay before 4008
READ_COUNT = 500  # entries per XREAD
READ_BLOCK_MS = 1000  # XREAD BLOCK
BATCH_WAIT = 0.005  # seconds to wait after a part-full batch, to batch more
SEEN_IDS = 10_000  # recently routed outbox ids remembered to drop stream duplicates
HEARTBEAT = 25.0  # seconds between pings to each socket; half of it to answer
STALLED_CLOSE_TIMEOUT = 1.0  # a stalled client's close frame waits behind its unread data
STOP_TIMEOUT = 2.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

WRITE_BUFFER_LIMIT = 256 * 1024  # bytes of unsent output before a socket is closed with 4008


_NO_IDS: frozenset[int] = frozenset()  # shared: one object less to touch per delivery
PONG_FRAME = b'\x81\x0f{"type":"pong"}'  # the answer to a client's "ping" message
_SHORT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (server to client), built once per event."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[n] + payload
    if n < 65536:
        return _MEDIUM_HEADER.pack(0x81, 126, n) + payload
    return _LONG_HEADER.pack(0x81, 127, n) + payload


class Subscriber(Connection):
    """One WebSocket of one user: the socket's protocol once the /ws handler took it over.

    Live events are written straight to the socket's transport as ready-made text frames,
    built once per event and shared by every socket of its user: no per-socket queue, task or
    await (perf-notes: both cost CPU and memory per connection). A client that stops reading
    is bounded by its transport's buffered output: past the hub's ``write_buffer_limit`` it is
    closed with 4008 and resumes from its last id when it reconnects.
    """

    __slots__ = ("_buffer_limit", "_hub", "_live", "_pending", "_pongs_owed", "_skip",
                 "_until", "heartbeat_slot", "user_id")

    def __init__(self, hub: Hub, user_id: int):
        super().__init__()
        self._hub = hub
        self._buffer_limit = hub.write_buffer_limit
        self.user_id = user_id
        self._pending: list | None = []
        self._pongs_owed = 0  # "ping"s received during the replay, answered after it
        self._skip: frozenset[int] = _NO_IDS
        self._until: tuple[int, int] | None = None
        # Replay over, past the stream position it covered, and the socket open: cleared by
        # close_soon and by a failed write.
        self._live = False
        self.heartbeat_slot = 0

    def deliver(self, event_id: int, frame: bytes, stream_id: bytes | str) -> int:
        """Write a live event (called by the hub in stream order); returns 1 if written.

        :meth:`Hub.route` makes the first branch's check itself and calls :meth:`write_live`
        (one call per delivery instead of two: 2.4% of the routing's instructions,
        bench/hub_cost.py).
        """
        if self._live:
            return 0 if event_id in self._skip else self.write_live(frame)
        if self.closing is not None or event_id in self._skip:
            return 0
        if self._pending is not None:
            if len(self._pending) >= self._hub.queue_size:
                self.close_soon(CloseCode.TOO_SLOW)
                return 0
            self._pending.append((event_id, frame, stream_id))
            return 0
        if self._until is not None:
            if stream_position(stream_id) <= self._until:
                return 0
            self._until = None
            self._live = self._writable()
        return self._write(frame)

    def write_live(self, frame: bytes) -> int:
        """The per-delivery path of a live socket: one buffer check and one write."""
        transport = self._transport
        if transport.get_write_buffer_size() > self._buffer_limit:
            self.close_soon(CloseCode.TOO_SLOW)
            return 0
        try:
            transport.write(frame)
        except RuntimeError:  # uvloop, once the peer's close is processed
            self._live = False
            return 0
        return 1

    def send_text(self, text: str) -> bool:
        """Write a message outside the event stream (the hello, the replay); False if closed."""
        return bool(self._write(text_frame(text.encode())))

    def on_text(self, text: str) -> None:
        """Answer "ping" (after the hello and the replay); ignore anything else."""
        if text.strip() == "ping":
            if self._pending is not None:
                self._pongs_owed += 1
            else:
                self._write(PONG_FRAME)

    def ping(self) -> None:
        """Heartbeat: write a ping; the peer must answer (or send anything) before the check."""
        if self.closing is None:
            self._awaiting_pong = True
            self._write(PING_FRAME)

    def check_pong(self) -> None:
        """Heartbeat: drop a peer that has not answered the last ping (no close handshake)."""
        transport = self._transport
        if self._awaiting_pong and transport is not None and not transport.is_closing():
            log.info("ws: user %s did not answer a ping; dropping the connection", self.user_id)
            transport.abort()

    def go_live(self, replayed_ids: Iterable[int], stream_end: str = "0-0") -> None:
        """End replay: release held events published after the history was read.

        ``stream_end`` is the stream's last entry id read atomically with the history: every
        entry up to it was replayed, already seen by the client, or is covered by a
        ``recovered: false`` hello, so only later entries are delivered.
        """
        self._skip = frozenset(replayed_ids) or _NO_IDS
        self._until = stream_position(stream_end)
        pending, self._pending = self._pending or [], None
        for _ in range(self._pongs_owed):
            self._write(PONG_FRAME)
        self._pongs_owed = 0
        for event_id, frame, stream_id in pending:
            self.deliver(event_id, frame, stream_id)

    def close_soon(self, code: CloseCode) -> None:  # type: ignore[override]
        """Close this socket with ``code`` (idempotent); the handshake ends on its own."""
        if self.closing is not None:
            return
        if code is CloseCode.TOO_SLOW:
            log.warning("ws: user %s too slow, closing with %d", self.user_id, int(code))
        # The close frame is written before any wait, so giving up on a stalled peer loses
        # nothing: it still reads the frame after the data written before it.
        self.start_closing(code, reason(code), STALLED_CLOSE_TIMEOUT
                           if code is CloseCode.TOO_SLOW else CLOSE_TIMEOUT)

    def on_closing(self) -> None:
        self._live = False  # no event frame may follow the close frame

    def on_lost(self) -> None:
        self._hub.unsubscribe(self)

    def _writable(self) -> bool:
        transport = self._transport
        return self.closing is None and transport is not None and not transport.is_closing()

    def _write(self, frame: bytes) -> int:
        """Write outside the live fast path (held events, pings, pongs), checking everything."""
        if not self._writable():
            self._live = False
            return 0  # never a frame after the close frame
        return self.write_live(frame)


class Hub:
    """The process's event reader and the registry of its subscribers."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, metrics: Metrics,
                 queue_size: int = HOLD_LIMIT, read_count: int = READ_COUNT,
                 block_ms: int = READ_BLOCK_MS, batch_wait: float = BATCH_WAIT,
                 heartbeat: float = HEARTBEAT, write_buffer_limit: int = WRITE_BUFFER_LIMIT,
                 backoff_max: float = BACKOFF_MAX) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.queue_size = queue_size
        self.read_count = read_count
        self.block_ms = block_ms
        self.batch_wait = batch_wait
        self.write_buffer_limit = write_buffer_limit  # bytes of unsent output before 4008
        self.backoff_max = backoff_max  # seconds between retries while Redis is down, at most
        self.position: str | None = None  # last stream id read; None: not yet resolved
        # A tuple per user: routing iterates it once per event, subscribing is rare.
        self._users: dict[int, tuple[Subscriber, ...]] = {}
        self._seen: dict[int, None] = {}  # insertion-ordered; trimmed in bulk
        self._reader: asyncio.Task[None] | None = None
        self.heartbeat = Heartbeat(heartbeat)
        self.gc_policy = FullCollectionPolicy()

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, user_id: int, transport: Any = None) -> Subscriber:
        """Register a socket for its user's live events; they are held until ``go_live``.

        The subscriber is the socket's protocol: :func:`wsgateway.connection.take_over` (or
        ``transport`` here) connects it, and it unsubscribes itself when the socket closes.
        """
        subscriber = Subscriber(self, user_id)
        if transport is not None:
            subscriber.connection_made(transport)
        self._users[user_id] = (*self._users.get(user_id, ()), subscriber)
        self.heartbeat.add(subscriber)
        self.metrics.gateway_connections.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._users.get(subscriber.user_id, ())
        if subscriber not in subscribers:
            return  # already
        at = subscribers.index(subscriber)
        rest = subscribers[:at] + subscribers[at + 1:]  # no closure: it would keep a cell
        if rest:
            self._users[subscriber.user_id] = rest
        else:
            del self._users[subscriber.user_id]
        self.heartbeat.remove(subscriber)
        self.gc_policy.connection_closed()
        self.metrics.gateway_connections.dec()

    def subscriber_count(self) -> int:
        return len(self.heartbeat)  # every subscriber is in it, from subscribe to unsubscribe

    async def close_all(self, code: CloseCode, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every socket with ``code`` and wait (bounded) for the closes to finish."""
        for subscribers in list(self._users.values()):
            for subscriber in subscribers:
                subscriber.close_soon(code)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.subscriber_count() and loop.time() < deadline:
            await asyncio.sleep(0.05)

    # -- reading --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fix the start position at the stream's end (when Redis answers) and start reading."""
        try:
            self.position = await asyncio.wait_for(self._stream_end(), 2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("hub: Redis unavailable at start (%s); reading once it answers", exc)
        self._reader = asyncio.create_task(self._read_forever(), name="ws-hub-reader")
        self.heartbeat.start()
        self.gc_policy.start(self.subscriber_count)

    async def stop(self) -> None:
        await self.heartbeat.stop()
        await self.gc_policy.stop()
        if self._reader is not None:
            self._reader.cancel()
            # Bounded: shutdown must stay within the platform's grace period.
            done, _ = await asyncio.wait({self._reader}, timeout=STOP_TIMEOUT)
            if not done:
                log.warning("stream reader did not stop within %.0fs; leaving it", STOP_TIMEOUT)
            self._reader = None

    async def _read_forever(self) -> None:
        backoff = BACKOFF_FIRST
        recovering = False
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                if self.position is None:
                    self.position = await self._stream_end()
                elif recovering:
                    await self._check_stream_reset()
                tail = StreamTail(self.keys.events, self._route_tail, count=self.read_count,
                                  block_ms=self.block_ms, batch_wait=self.batch_wait)
                recovering = True  # whatever ends the tail, check the stream before resuming
                await tail.follow(self.client.connection_pool, self.position)
            except (RedisError, OSError) as exc:
                if loop.time() - started > self.backoff_max:
                    backoff = BACKOFF_FIRST  # it had been reading: a new outage
                log.warning("hub: reading %s failed (%s); retrying in %.1fs",
                            self.keys.events, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    def _route_tail(self, entries: list[Any]) -> None:
        self.position = _text(entries[-1][0])  # where the next tail resumes after an outage
        self.route(entries)

    def route(self, entries: list[tuple[Any, Any]]) -> None:
        """Hand each new event to its user's subscribers on this process (metrics per batch)."""
        seen, users = self._seen, self._users
        delivered = 0
        now = time.time()
        latencies: list[float] = []
        for stream_id, raw in entries:
            try:
                if len(raw) == 8 and raw[0] == b"u" and raw[2] == b"i" and raw[6] == b"d":
                    # The outbox relay's layout (u, i, t, d): no dict per entry.
                    user_id, event_id, created, payload = int(raw[1]), int(raw[3]), raw[5], raw[7]
                else:
                    fields = dict(zip(raw[::2], raw[1::2], strict=False))
                    user_id, event_id = int(fields[b"u"]), int(fields[b"i"])
                    created, payload = fields.get(b"t"), fields[b"d"]
            except (KeyError, ValueError, TypeError):
                log.warning("hub: skipping malformed stream entry %s", _text(stream_id))
                continue
            if event_id in seen:
                continue
            seen[event_id] = None
            subscribers = users.get(user_id)
            if subscribers is None:
                continue
            frame = text_frame(payload)
            n = 0
            for subscriber in subscribers:  # Subscriber.deliver, its first check inline
                if subscriber._live and event_id not in subscriber._skip:
                    n += subscriber.write_live(frame)
                else:
                    n += subscriber.deliver(event_id, frame, stream_id)
            if n:
                delivered += n
                if created:
                    try:
                        latency = now - int(created) / 1000
                    except ValueError:  # a bad time stamp costs the metric, not the event
                        continue
                    latencies.append(latency if latency > 0 else 0.0)
        if len(seen) > 2 * SEEN_IDS:
            self._seen = dict.fromkeys(islice(seen, len(seen) - SEEN_IDS, None))
        if delivered:
            self.metrics.events_delivered.inc(delivered)
        if latencies:
            self.metrics.delivery_latency.observe_many(latencies)

    async def _stream_end(self) -> str:
        last = await self.client.xrevrange(self.keys.events, count=1)
        return _text(last[0][0]) if last else "0-0"

    async def _check_stream_reset(self) -> None:
        """After an outage: if Redis lost the stream, continue from its new end."""
        end = await self._stream_end()
        if self.position is not None and stream_position(end) < stream_position(self.position):
            log.warning("hub: %s restarted below our position %s; continuing from %s",
                        self.keys.events, self.position, end)
            self.position = end


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_position(stream_id: bytes | str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a comparable pair."""
    ms, _, seq = _text(stream_id).partition("-")
    return int(ms), int(seq or 0)
