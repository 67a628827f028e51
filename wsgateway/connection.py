"""A server-side WebSocket connection that owns its transport after the handshake.

aiohttp checks the upgrade request (``WebSocketResponse.can_prepare``); then the /ws handler
writes the 101 answer itself, makes the socket's transport talk to a :class:`Connection` and
tells aiohttp's request handler that its connection is gone (:func:`take_over`), so that
aiohttp's per-request objects (request handler, HTTP parser, request and headers, two tasks,
the handler's coroutines, the WebSocket reader, queue and writer) are freed once the handler
returns. An open socket is then its transport and this one object: no task, no future, no
coroutine. (bench/gateway.py: aiohttp's objects were 13 of the 18 KB each connection cost.)

What this class does, the same as aiohttp's WebSocketResponse did for the gateway:

- reads the client's frames (masked or not), up to ``MAX_MESSAGE`` bytes a message, and hands
  each text message to :meth:`Connection.on_text`; binary messages are ignored;
- answers a ping frame with a pong carrying its payload; any frame counts as "heard";
- answers the client's close frame with a close frame (1000) and closes the transport;
- on a protocol error closes with 1002, on bad UTF-8 with 1007, on a message over
  ``MAX_MESSAGE`` with 1009;
- :meth:`Connection.start_closing` writes a close frame and closes the transport once the client
  answers, or after a timeout; no frame is written after the close frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
from typing import Any

from aiohttp import WSCloseCode, web

log = logging.getLogger("wsgateway.connection")

MAX_MESSAGE = 4096  # bytes a client message may have (clients only ever send "ping")
CLOSE_TIMEOUT = 5.0  # seconds a close handshake may take
STALLED_ABORT_AFTER = 30.0  # seconds a closed but unread socket may keep its buffered output

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ALLOWED_CLOSE_CODES = frozenset(int(code) for code in WSCloseCode)  # as aiohttp accepts
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_CLOSE_CODE = struct.Struct("!H")
_NORMAL_CLOSE_FRAME = b"\x88\x02" + _CLOSE_CODE.pack(1000)


def handshake_response(key: str) -> bytes:
    """The 101 answer to an upgrade request that ``can_prepare`` accepted (no extensions)."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()


def close_frame(code: int, message: bytes = b"") -> bytes:
    payload = _CLOSE_CODE.pack(code) + message[:123]
    return bytes((0x88, len(payload))) + payload


def take_over(request: web.Request, connection: Connection) -> asyncio.Transport | None:
    """Answer the upgrade and move the request's socket from aiohttp to ``connection``.

    aiohttp's request handler is told that its connection is lost after its transport
    reference is dropped, so it neither closes the socket nor writes to it again. The handler
    that called this must then return a :class:`TakenOver`. None if the socket is already gone.
    """
    transport = request.transport
    protocol = request.protocol
    if transport is None or transport.is_closing():
        return None
    transport.set_protocol(connection)
    connection.connection_made(transport)
    transport.write(handshake_response(request.headers["Sec-WebSocket-Key"]))
    protocol.transport = None  # type: ignore[attr-defined]
    protocol.connection_lost(None)
    transport.resume_reading()  # in case aiohttp had paused it
    return transport


class TakenOver(web.StreamResponse):
    """What a handler returns after :func:`take_over`: aiohttp writes nothing for it."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None



class Connection(asyncio.Protocol):
    """One server-side WebSocket on a transport, frames parsed in ``data_received``."""

    __slots__ = ("_awaiting_pong", "_closer", "_fragments", "_opcode", "_tail", "_transport",
                 "closing")

    def __init__(self) -> None:
        self._transport: Any = None
        self.closing: int | None = None  # the close code once a close frame was written
        self._tail = b""  # an incomplete frame, waiting for the rest
        self._fragments: bytes | None = None  # a fragmented message so far
        self._opcode = 0  # the fragmented message's opcode
        self._closer: asyncio.TimerHandle | None = None
        self._awaiting_pong = False

    # -- hooks ----------------------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        """A text message arrived."""

    def on_closing(self) -> None:
        """A close frame is about to be written: nothing may follow it."""

    def on_lost(self) -> None:
        """The transport is closed."""

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_closer()
        if self.closing is None:
            self.closing = WSCloseCode.ABNORMAL_CLOSURE
            self.on_closing()
        self.on_lost()

    def data_received(self, data: bytes) -> None:
        self._awaiting_pong = False  # the peer is alive
        if self._tail:
            data, self._tail = self._tail + data, b""
        end = len(data)
        pos = 0
        while end - pos >= 2 and not self._transport.is_closing():
            used = self._frame(data, pos, end)
            if used == 0:
                break
            pos += used
        if pos < end and not self._transport.is_closing():
            self._tail = data[pos:]

    # -- writing and closing --------------------------------------------------------------------

    def start_closing(self, code: int, message: bytes = b"",
                      timeout: float = CLOSE_TIMEOUT) -> None:
        """Write a close frame; close the transport when the client answers, or after
        ``timeout`` seconds."""
        if self.closing is not None:
            return
        self.closing = code
        self.on_closing()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(code, message))
        self._closer = asyncio.get_running_loop().call_later(timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._closer = None
        transport = self._transport
        transport.close()
        if transport.get_write_buffer_size():
            # A client that stopped reading would pin its unsent output until TCP gives up.
            asyncio.get_running_loop().call_later(STALLED_ABORT_AFTER, transport.abort)

    def _cancel_closer(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None

    # -- reading --------------------------------------------------------------------------------

    def _frame(self, data: bytes, pos: int, end: int) -> int:
        """Handle the frame at ``pos``; its length, or 0 if it is not complete yet."""
        first, second = data[pos], data[pos + 1]
        fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
        if first & 0x70:
            return self._fail(WSCloseCode.PROTOCOL_ERROR)
        if opcode >= _OP_CLOSE:
            if opcode > _OP_PONG or not fin or length > 125:
                return self._fail(WSCloseCode.PROTOCOL_ERROR)
        elif opcode > _OP_BINARY:
            return self._fail(WSCloseCode.PROTOCOL_ERROR)
        head = 2
        if length == 126:
            if end - pos < 4:
                return 0
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if end - pos < 10:
                return 0
            length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        if opcode < _OP_CLOSE and length + len(self._fragments or b"") > MAX_MESSAGE:
            return self._fail(WSCloseCode.MESSAGE_TOO_BIG)
        masked = second & 0x80
        start = pos + head + (4 if masked else 0)
        if end - start < length:
            return 0
        payload = data[start:start + length]
        if masked and length:
            payload = _unmask(payload, data[start - 4:start])
        if opcode >= _OP_CLOSE:
            self._control(opcode, payload)
        else:
            self._data(bool(fin), opcode, payload)
        return start + length - pos

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            if self.closing is None:
                self._transport.write(bytes((0x8A, len(payload))) + payload)
        elif opcode == _OP_CLOSE:
            if len(payload) == 1:
                self._fail(WSCloseCode.PROTOCOL_ERROR)
                return
            if payload:
                code = _CLOSE_CODE.unpack(payload[:2])[0]
                if code < 3000 and code not in _ALLOWED_CLOSE_CODES:
                    self._fail(WSCloseCode.PROTOCOL_ERROR)
                    return
                try:
                    payload[2:].decode()
                except UnicodeDecodeError:
                    self._fail(WSCloseCode.INVALID_TEXT)
                    return
            self._closed_by_peer()

    def _closed_by_peer(self) -> None:
        transport = self._transport
        if self.closing is None:  # the client closes: answer, as aiohttp did, with 1000
            self.closing = WSCloseCode.OK
            self.on_closing()
            transport.write(_NORMAL_CLOSE_FRAME)
        self._cancel_closer()
        transport.close()

    def _data(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == _OP_CONTINUATION:
            if self._fragments is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR)
                return
            payload, opcode = self._fragments + payload, self._opcode
            self._fragments = None
        elif self._fragments is not None:
            self._fail(WSCloseCode.PROTOCOL_ERROR)
            return
        if not fin:
            self._fragments, self._opcode = payload, opcode
            return
        if opcode == _OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(WSCloseCode.INVALID_TEXT)
                return
            if self.closing is None:
                self.on_text(text)

    def _fail(self, code: int) -> int:
        """A protocol error: close with ``code``, read no further; returns 0 (no frame)."""
        log.info("ws: closing a connection with %d: the client broke the protocol", code)
        self._tail = b""
        self._fragments = None
        if self.closing is None:
            self.start_closing(code)
        self._cancel_closer()
        self._transport.close()
        return 0


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
