"""The WebSocket gateway over real sockets, with a real database, Redis and outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import redis
import yarl
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics, process_metrics
from paxyo.accounts import deposit
from paxyo.cli.private_redis import PrivateRedis
from paxyo.events import event_id
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from tests.support import ServerThread, free_port, http_json
from wsgateway import hub as hub_module
from wsgateway.app import create_app
from wsgateway.auth import mint_token
from wsgateway.close_codes import CloseCode, should_reconnect
from wsgateway.ws import WsOptions, setup_websocket

TIMEOUT = 5.0


def gateway_app(settings: Settings, options: WsOptions | None = None) -> web.Application:
    app = create_app(settings, process_metrics(), ws_options=options)
    if not any(r.resource is not None and r.resource.canonical == "/ws"
               for r in app.router.routes()):
        setup_websocket(app, settings, options)
    return app


@contextlib.contextmanager
def serve(settings: Settings, options: WsOptions | None = None) -> Iterator[ServerThread]:
    server = ServerThread(lambda: gateway_app(settings, options))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Publisher:
    """Deposits through the domain and publishes them with the real outbox relay."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = open_engine(settings.database_url)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.keys = Keys(settings.redis_prefix)
        self.relay = OutboxRelay(self.engine, self.redis, RelayConfig(
            self.keys, settings.history_size, settings.history_ttl))

    def commit(self, user_id: int, amount: str = "1.00") -> int:
        """Deposit without publishing; returns the outbox id."""
        result = deposit(self.engine, user_id, Decimal(amount), uuid.uuid4().hex, 2)
        assert result.event is not None
        return result.event.outbox_id

    def deposit(self, user_id: int, amount: str = "1.00") -> int:
        outbox_id = self.commit(user_id, amount)
        assert self.relay.publish_ids([outbox_id]) == 1
        return outbox_id

    def stored_bytes(self, user_id: int, outbox_id: int) -> bytes:
        [member] = self.redis.zrangebyscore(self.keys.history(user_id), outbox_id, outbox_id)
        return member

    def close(self) -> None:
        self.redis.close()
        self.engine.dispose()


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    pub = Publisher(settings)
    yield pub
    pub.close()


@pytest.fixture
def gateway(settings: Settings) -> Iterator[ServerThread]:
    with serve(settings) as server:
        yield server


def ws_url(server: ServerThread, settings: Settings, user_id: int,
           last_id: str | int | None = None, token: str | None = None) -> str:
    token = token or mint_token(settings.jwt_secret or "", user_id)
    url = f"{server.url}/ws?token={token}"
    if last_id is not None:
        url += f"&last_id={event_id(last_id) if isinstance(last_id, int) else last_id}"
    return url


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is WSMsgType.TEXT, message
    return orjson.loads(message.data)


async def expect_silence(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        message = await ws.receive(timeout=seconds)
        pytest.fail(f"unexpected message {message}")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- hello and resume ----------------------------------------------------------------------------

def test_hello_without_last_id_is_not_recovered_and_replays_nothing(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    publisher.deposit(111, "10.00")
    last = publisher.deposit(111, "5.00")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(gateway, settings, 111)) as ws:
                assert await receive(ws) == {"type": "hello", "user_id": 111, "balance": "15.00",
                                             "last_id": event_id(last), "recovered": False}
                await expect_silence(ws)
            async with session.ws_connect(ws_url(gateway, settings, 999)) as ws:
                assert await receive(ws) == {"type": "hello", "user_id": 999, "balance": "0.00",
                                             "last_id": None, "recovered": False}

    run(scenario())


def test_resume_replays_exactly_the_missed_events_then_live(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    ids = [publisher.deposit(111) for _ in range(5)]

    async def scenario() -> None:
        url = ws_url(gateway, settings, 111, ids[1])
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            hello = await receive(ws)
            assert hello["recovered"] is True and hello["last_id"] == event_id(ids[-1])
            for expected in ids[2:]:
                message = await ws.receive(timeout=TIMEOUT)
                assert message.data.encode() == publisher.stored_bytes(111, expected)
            live = await asyncio.to_thread(publisher.deposit, 111)
            assert (await receive(ws))["id"] == event_id(live)
            await expect_silence(ws)

    run(scenario())


def test_resume_is_gapless_while_events_arrive_during_replay(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    first = publisher.deposit(111)
    published = [first]
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.is_set() and len(published) < 60:
            published.append(publisher.deposit(111))

    async def scenario() -> list[int]:
        seen: list[int] = []
        async with aiohttp.ClientSession() as session:
            thread = threading.Thread(target=keep_publishing)
            thread.start()
            try:
                for _ in range(5):  # reconnect repeatedly while the publisher runs
                    await asyncio.sleep(0.02)
                    last = seen[-1] if seen else first
                    async with session.ws_connect(ws_url(gateway, settings, 111, last)) as ws:
                        assert (await receive(ws))["recovered"] is True
                        with contextlib.suppress(asyncio.TimeoutError):
                            for _ in range(4):
                                seen.append(int((await receive(ws, 0.5))["id"]))
            finally:
                stop.set()
                thread.join(TIMEOUT)
            async with session.ws_connect(ws_url(gateway, settings, 111, seen[-1])) as ws:
                await receive(ws)
                while len(seen) < len(published) - 1:
                    seen.append(int((await receive(ws))["id"]))
                await expect_silence(ws)
        return seen

    seen = run(scenario())
    assert seen == published[1:]


def test_last_id_older_than_the_history_is_not_recovered(settings: Settings) -> None:
    settings = settings.with_overrides(history_size=3)
    publisher = Publisher(settings)
    try:
        ids = [publisher.deposit(111) for _ in range(6)]  # the history keeps ids[3:]
        with serve(settings) as server:

            async def hello_for(last_id: str | int) -> tuple[dict[str, Any], list[int]]:
                async with aiohttp.ClientSession() as session:
                    url = ws_url(server, settings, 111, last_id)
                    async with session.ws_connect(url) as ws:
                        hello = await receive(ws)
                        replayed = []
                        with contextlib.suppress(asyncio.TimeoutError):
                            while True:
                                replayed.append(int((await receive(ws, 0.3))["id"]))
                        return hello, replayed

            hello, replayed = run(hello_for(ids[1]))
            assert hello["recovered"] is False and replayed == []
            assert hello["last_id"] == event_id(ids[-1])
            hello, replayed = run(hello_for(ids[2]))  # the floor itself: all after it are kept
            assert hello["recovered"] is True and replayed == ids[3:]
            hello, replayed = run(hello_for("0"))  # well formed, but not one of ours
            assert hello["recovered"] is False and replayed == []
            hello, replayed = run(hello_for(ids[-1] + 1000))  # newer than anything published
            assert hello["recovered"] is False and replayed == []
    finally:
        publisher.close()


def test_expired_history_is_not_recovered(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    ids = [publisher.deposit(111) for _ in range(3)]
    keys = Keys(settings.redis_prefix)
    publisher.redis.delete(keys.history(111), keys.history_times(111))  # as if the TTL passed

    async def scenario() -> dict[str, Any]:
        url = ws_url(gateway, settings, 111, ids[0])
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            hello = await receive(ws)
            await expect_silence(ws)
            return hello

    assert run(scenario())["recovered"] is False


# -- routing ------------------------------------------------------------------------------------

def test_live_event_reaches_only_its_user(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            mine = await session.ws_connect(ws_url(gateway, settings, 111))
            other = await session.ws_connect(ws_url(gateway, settings, 222, "0"))
            await receive(mine), await receive(other)
            outbox_id = await asyncio.to_thread(publisher.deposit, 111, "2.50")
            message = await mine.receive(timeout=TIMEOUT)
            assert message.type is WSMsgType.TEXT
            assert message.data.encode() == publisher.stored_bytes(111, outbox_id)
            event = orjson.loads(message.data)
            assert event["type"] == "balance.updated" and event["balance"] == "2.50"
            await expect_silence(other)
            await mine.close(), await other.close()
            # Another user's token never replays user 111's history either.
            async with session.ws_connect(ws_url(gateway, settings, 222, "0")) as ws:
                hello = await receive(ws)
                assert hello["user_id"] == 222 and hello["last_id"] is None
                await expect_silence(ws)

    run(scenario())


def test_republished_and_duplicated_stream_entries_are_delivered_once(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    async def scenario() -> None:
        url = ws_url(gateway, settings, 111)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await receive(ws)
            first = await asyncio.to_thread(publisher.commit, 111)
            assert publisher.relay.publish_ids([first]) == 1
            assert publisher.relay.publish_ids([first]) == 0  # a repeat is a no-op
            keys = publisher.keys
            publisher.redis.xadd(keys.events, {  # a duplicate the Lua guard did not stop
                "u": 111, "i": first, "t": int(time.time() * 1000),
                "d": publisher.stored_bytes(111, first)})
            second = await asyncio.to_thread(publisher.deposit, 111)
            assert [int((await receive(ws))["id"]) for _ in range(2)] == [first, second]
            await expect_silence(ws)

    run(scenario())


def test_two_gateways_and_a_client_moving_between_them(
        settings: Settings, publisher: Publisher) -> None:
    published: list[int] = []
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.is_set() and len(published) < 40:
            published.append(publisher.deposit(111))
            time.sleep(0.005)

    with serve(settings) as a, serve(settings) as b:

        async def scenario() -> list[int]:
            async with aiohttp.ClientSession() as session:
                on_a = await session.ws_connect(ws_url(a, settings, 111))
                on_b = await session.ws_connect(ws_url(b, settings, 222))
                await receive(on_a), await receive(on_b)
                other = await asyncio.to_thread(publisher.deposit, 222)
                assert (await receive(on_b))["id"] == event_id(other)
                seen: list[int] = []
                thread = threading.Thread(target=keep_publishing)
                thread.start()
                try:
                    while len(seen) < 10:
                        seen.append(int((await receive(on_a))["id"]))
                    await on_a.close()  # move to gateway B mid-stream
                    moved = await session.ws_connect(ws_url(b, settings, 111, seen[-1]))
                    assert (await receive(moved))["recovered"] is True
                finally:
                    thread.join(TIMEOUT * 4)
                while len(seen) < len(published):
                    seen.append(int((await receive(moved))["id"]))
                await expect_silence(moved)
                await expect_silence(on_b)
                await moved.close(), await on_b.close()
                return seen

        seen = run(scenario())
    stop.set()
    assert len(published) == 40
    assert seen == published


# -- slow clients, heartbeat, shutdown -----------------------------------------------------------

def test_slow_client_is_closed_with_4008_while_others_keep_receiving(
        settings: Settings, publisher: Publisher, caplog: pytest.LogCaptureFixture) -> None:
    keys = publisher.keys
    big = b"x" * 256 * 1024

    with serve(settings, WsOptions(write_buffer_limit=16 * 1024)) as server:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                slow = await session.ws_connect(ws_url(server, settings, 333),
                                                max_msg_size=1 << 20)
                normal = await session.ws_connect(ws_url(server, settings, 111))
                await receive(slow), await receive(normal)
                pipe = publisher.redis.pipeline(transaction=False)
                for n in range(1, 121):  # ~30 MB: more than socket buffers can hide
                    payload = b'{"type":"order.updated","id":"%d","pad":"%s"}' % (n, big)
                    pipe.xadd(keys.events, {"u": 333, "i": 10_000_000 + n,
                                            "t": int(time.time() * 1000), "d": payload})
                await asyncio.to_thread(pipe.execute)
                for _ in range(2):
                    outbox_id = await asyncio.to_thread(publisher.deposit, 111)
                    assert (await receive(normal))["id"] == event_id(outbox_id)
                received = 0
                while True:  # now read: the data that was queued, then the close
                    message = await slow.receive(timeout=TIMEOUT)
                    if message.type is not WSMsgType.TEXT:
                        break
                    received += 1
                # The close frame follows the data already written. On a loaded machine the
                # hub may give up on the stalled close first and drop the connection; either
                # way the gateway closed this client, and only this one, as too slow.
                assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), message
                if message.type is WSMsgType.CLOSE:
                    assert message.data == CloseCode.TOO_SLOW
                assert "user 333 too slow, closing with 4008" in caplog.text
                assert "user 111 too slow" not in caplog.text
                assert received < 120
                outbox_id = await asyncio.to_thread(publisher.deposit, 111)
                assert (await receive(normal))["id"] == event_id(outbox_id)
                await slow.close(), await normal.close()

        run(scenario())


def test_ping_is_answered_and_other_messages_ignored(
        gateway: ServerThread, settings: Settings) -> None:
    async def scenario() -> None:
        url = ws_url(gateway, settings, 111)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await receive(ws)
            await ws.send_str("hello there")
            await expect_silence(ws, 0.2)
            await ws.send_str("ping")
            assert await receive(ws) == {"type": "pong"}

    run(scenario())


def test_heartbeat_drops_a_silent_peer_and_keeps_one_that_answers(
        settings: Settings, publisher: Publisher) -> None:
    with serve(settings, WsOptions(heartbeat=0.5)) as server:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                alive = await session.ws_connect(ws_url(server, settings, 111))  # answers pings
                silent = await session.ws_connect(ws_url(server, settings, 222), autoping=False)
                await receive(alive)
                # aiohttp answers pings inside receive(): the live peer keeps reading.
                reading = asyncio.ensure_future(receive(alive, timeout=10.0))
                pings = 0
                while (hello := await silent.receive(timeout=TIMEOUT)).type is WSMsgType.PING:
                    pings += 1  # a ping (a control frame) may come before the hello
                assert orjson.loads(hello.data)["type"] == "hello"
                while True:
                    message = await silent.receive(timeout=TIMEOUT)
                    if message.type is not WSMsgType.PING:
                        break
                    pings += 1
                assert pings >= 1
                assert message.type in (WSMsgType.CLOSED, WSMsgType.ERROR), message
                await asyncio.sleep(1.5)  # three more rounds
                assert not reading.done()
                outbox_id = await asyncio.to_thread(publisher.deposit, 111)
                assert (await reading)["id"] == event_id(outbox_id)
                await alive.close()

        run(scenario())


def test_live_events_flow_again_after_a_redis_restart(
        settings: Settings, tmp_path: Any) -> None:
    server = PrivateRedis(free_port(), persist_dir=tmp_path / "redis")
    local = dataclasses.replace(settings, redis_url=server.start())
    publisher = Publisher(local)
    try:
        with serve(local, WsOptions(backoff_max=0.5)) as gateway:

            async def scenario() -> None:
                async with aiohttp.ClientSession() as session, \
                        session.ws_connect(ws_url(gateway, local, 111)) as ws:
                    await receive(ws)
                    before = await asyncio.to_thread(publisher.deposit, 111)
                    assert (await receive(ws))["id"] == event_id(before)
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(1.0)  # the reader fails and retries meanwhile
                    await asyncio.to_thread(server.start)
                    after = await asyncio.to_thread(publisher.deposit, 111)
                    assert (await receive(ws, timeout=10))["id"] == event_id(after)

            run(scenario())
    finally:
        publisher.close()
        server.stop()


def test_shutdown_closes_sockets_with_1001(settings: Settings) -> None:
    server = ServerThread(lambda: gateway_app(settings))
    server.start()

    async def scenario() -> int | None:
        url = ws_url(server, settings, 111)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await receive(ws)
            await asyncio.to_thread(server.stop)
            message = await ws.receive(timeout=TIMEOUT)
            assert message.type is WSMsgType.CLOSE, message
            return message.data  # the code in the close frame

    assert run(scenario()) == CloseCode.GOING_AWAY


# -- the WebSocket protocol after the take-over (wsgateway/connection.py) ------------------------

RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


async def raw_connect(server: ServerThread, settings: Settings,
                      user_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client on a bare TCP stream, past the 101 answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    token = mint_token(settings.jwt_secret or "", user_id)
    writer.write(f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + RFC_ACCEPT in head
    return reader, writer


def client_frame(opcode: int, payload: bytes, fin: bool = True, first: int = 0) -> bytes:
    """A masked client frame; ``first`` ORs bits into the first byte (reserved bits)."""
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    size = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | first | opcode,)) + size + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame (unmasked): (opcode, payload); (-1, b"") at EOF."""
    try:
        first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    except asyncio.IncompleteReadError:
        return -1, b""
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(n)


async def read_text(reader: asyncio.StreamReader) -> dict[str, Any]:
    opcode, payload = await read_frame(reader)
    assert opcode == 1, (opcode, payload)
    return orjson.loads(payload)


def test_pings_fragments_and_a_ping_before_the_hello_are_answered_in_order(
        gateway: ServerThread, settings: Settings) -> None:
    async def scenario() -> None:
        reader, writer = await raw_connect(gateway, settings, 111)
        writer.write(client_frame(1, b"ping"))  # at once: answered after the hello
        assert (await read_text(reader))["type"] == "hello"
        assert await read_text(reader) == {"type": "pong"}
        writer.write(client_frame(9, b"are you there"))
        assert await read_frame(reader) == (10, b"are you there")
        writer.write(client_frame(1, b"pi", fin=False) + client_frame(9, b"between")
                     + client_frame(0, b"ng"))  # a control frame inside a fragmented message
        assert await read_frame(reader) == (10, b"between")
        assert await read_text(reader) == {"type": "pong"}
        writer.write(client_frame(1, b" " * 4092 + b"ping"))  # 4096 bytes: the largest allowed
        assert await read_text(reader) == {"type": "pong"}
        writer.write(client_frame(8, (1000).to_bytes(2, "big") + b"bye"))
        assert await read_frame(reader) == (8, (1000).to_bytes(2, "big"))
        assert await read_frame(reader) == (-1, b"")  # and the server closes the connection
        writer.close()

    run(scenario())


@pytest.mark.parametrize(("frames", "code"), [
    (client_frame(1, b" " * 4093 + b"ping"), 1009),  # 4097 bytes
    (client_frame(1, b"x" * 3000, fin=False) + client_frame(0, b"x" * 1200), 1009),
    (client_frame(1, b"\xff\xfeping"), 1007),  # not UTF-8
    (client_frame(1, b"ping", first=0x40), 1002),  # a reserved bit (no extension agreed)
    (client_frame(0, b"ping"), 1002),  # a continuation with nothing to continue
    (client_frame(1, b"pi", fin=False) + client_frame(1, b"ng"), 1002),  # no continuation
    (client_frame(9, b"x", fin=False), 1002),  # a fragmented control frame
    (client_frame(3, b"ping"), 1002),  # an unknown opcode
    (client_frame(8, (999).to_bytes(2, "big")), 1002),  # a close code nobody may send
], ids=["too-big", "too-big-fragmented", "bad-utf8", "reserved-bit", "stray-continuation",
        "unfinished-message", "fragmented-ping", "unknown-opcode", "bad-close-code"])
def test_protocol_errors_close_the_socket_with_their_code(
        gateway: ServerThread, settings: Settings, frames: bytes, code: int) -> None:
    async def scenario() -> tuple[int, bytes]:
        reader, writer = await raw_connect(gateway, settings, 111)
        assert (await read_text(reader))["type"] == "hello"
        writer.write(frames)
        close = await read_frame(reader)
        assert await read_frame(reader) == (-1, b"")
        writer.close()
        return close

    opcode, payload = run(scenario())
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == code


def test_aiohttp_request_objects_are_freed_once_the_socket_is_greeted(
        gateway: ServerThread, settings: Settings, publisher: Publisher) -> None:
    """A greeted socket costs its transport and its Subscriber, not aiohttp's request."""
    from aiohttp.web_protocol import RequestHandler

    def alive(kind: type) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is kind)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(ws_url(gateway, settings, 111 + n))
                       for n in range(5)]
            for ws in sockets:
                await receive(ws)
            deadline = time.monotonic() + TIMEOUT  # each handler returns after its hello
            while alive(RequestHandler) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert alive(RequestHandler) == 0
            assert alive(web.Request) == 0
            assert alive(hub_module.Subscriber) == 5
            outbox_id = await asyncio.to_thread(publisher.deposit, 113)
            assert (await receive(sockets[2]))["id"] == event_id(outbox_id)
            await sockets[0].close()
            assert sockets[0].close_code == 1000
            for ws in sockets[1:]:
                await ws.close()
            deadline = time.monotonic() + TIMEOUT  # the server sees the closes soon after
            while alive(hub_module.Subscriber) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert alive(hub_module.Subscriber) == 0  # nothing keeps a closed socket alive

    run(scenario())


def test_a_greeting_without_redis_closes_with_1013(settings: Settings) -> None:
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with serve(down) as server:

        async def scenario() -> Any:
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(ws_url(server, down, 111)) as ws:
                return await ws.receive(timeout=TIMEOUT)

        message = run(scenario())
    assert message.type is WSMsgType.CLOSE, message
    assert message.data == CloseCode.TRY_AGAIN_LATER


# -- refusals -----------------------------------------------------------------------------------

TOKEN_KINDS = ["missing", "garbage", "expired", "wrong secret", "alg none", "no exp", "bad sub"]


def _tokens(secret: str) -> dict[str, str | None]:
    now = int(time.time())
    return {
        "missing": None,
        "garbage": "not.a.jwt",
        "expired": mint_token(secret, 111, ttl=-60),
        "wrong secret": mint_token("another-secret-of-sufficient-length!", 111),
        "alg none": jwt.encode({"sub": "111", "exp": now + 60}, None, algorithm="none"),
        "no exp": jwt.encode({"sub": "111"}, secret, algorithm="HS256"),
        "bad sub": jwt.encode({"sub": "abc", "exp": now + 60}, secret, algorithm="HS256"),
    }


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_bad_tokens_are_refused_with_401(
        gateway: ServerThread, settings: Settings, kind: str) -> None:
    with warnings_ignored():
        token = _tokens(settings.jwt_secret or "")[kind]
    url = f"{gateway.url}/ws" + ("" if token is None else f"?token={token}")
    status, body = http_json("GET", url, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert status == 401 and isinstance(body["error"], str), body

    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url)
            return refused.value.status

    assert run(scenario()) == 401


@pytest.mark.parametrize("token", [
    "%E9", "%FF%FE", "caf%C3%A9", "a.b.c%E9", "a%00.b.c", "%D9%A1.%D9%A2.%D9%A3", "a.b.c%0A",
    "x" * 5000,
])
def test_odd_tokens_are_a_401_without_traceback(
        gateway: ServerThread, settings: Settings, token: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    url = f"{gateway.url}/ws?token={token}"
    status, body = http_json("GET", url, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert status == 401 and "token" in body["error"], (status, body)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


@pytest.mark.parametrize("last_id", [
    "%D9%A1%D9%A2%D9%A3", "%EF%BC%91", "%E2%91%A0", "not-an-id", "1e3", "+1", "-1", "1%20",
    "%201", "1.0", "0x10", "1" * 21, "%00", "1%00", "%FF",
])
def test_a_malformed_last_id_is_a_400_naming_it(
        gateway: ServerThread, settings: Settings, last_id: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    url = ws_url(gateway, settings, 111, last_id)
    status, body = http_json("GET", url, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert status == 400 and "last_id" in body["error"], (status, body)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []

    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(yarl.URL(url, encoded=True))
            return refused.value.status

    assert run(scenario()) == 400


def test_an_empty_last_id_is_no_last_id(gateway: ServerThread, settings: Settings) -> None:
    async def scenario() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(ws_url(gateway, settings, 111, "")) as ws:
            return await receive(ws)

    assert run(scenario())["recovered"] is False


def test_foreign_origin_is_refused_with_403(settings: Settings) -> None:
    settings = settings.with_overrides(allowed_origins=("https://panel.example",))
    with serve(settings) as server:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(ws_url(server, settings, 111),
                                             origin="https://evil.example")
                assert refused.value.status == 403
                async with session.ws_connect(ws_url(server, settings, 111),
                                              origin="https://panel.example") as ws:
                    assert (await receive(ws))["type"] == "hello"

        run(scenario())


def test_plain_get_is_a_400(gateway: ServerThread, settings: Settings) -> None:
    status, body = http_json("GET", ws_url(gateway, settings, 111))
    assert status == 400 and "WebSocket" in body["error"]


# -- the browser client and close codes ---------------------------------------------------------

def test_client_script_is_served(gateway: ServerThread) -> None:
    async def scenario() -> tuple[int, str, str]:
        url = f"{gateway.url}/paxyo-realtime.js"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, response.content_type, await response.text()

    status, content_type, text = run(scenario())
    assert status == 200 and content_type == "application/javascript"
    assert 'console.log("WebSocket connected")' in text and "PaxyoRealtime" in text


def test_close_codes_say_whether_to_reconnect() -> None:
    assert should_reconnect(CloseCode.GOING_AWAY) and should_reconnect(CloseCode.TOO_SLOW)
    assert not should_reconnect(CloseCode.UNAUTHORIZED)
    assert not should_reconnect(CloseCode.BAD_REQUEST)


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class FakeTransport:
    """What the hub touches of a transport; records the text frames written to it."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)
        if frame[0] == 0x81:
            assert frame[1] < 126  # one small, final text frame
            self.sent.append(frame[2:].decode())

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def entry(n: int, stream_ms: int, user_id: int = 111) -> tuple[bytes, list[bytes]]:
    """A stream entry as XREAD returns it (RESP2), in the outbox relay's field order."""
    return (f"{stream_ms}-0".encode(), [b"u", str(user_id).encode(), b"i", str(n).encode(),
                                        b"t", b"1", b"d", f'{{"id":"{n}"}}'.encode()])


def test_hub_routes_any_field_order_and_skips_malformed_entries() -> None:
    hub = hub_module.Hub(None, Keys("unused"), metrics=process_metrics())  # type: ignore[arg-type]
    socket = FakeTransport()
    hub.subscribe(111, socket).go_live(set())
    hub.route([
        (b"1-0", [b"d", b'{"id":"1"}', b"i", b"1", b"u", b"111"]),  # another order, no t
        (b"2-0", [b"u", b"111", b"d", b'{"id":"2"}']),  # no event id: skipped
        (b"3-0", [b"u", b"x", b"i", b"3", b"t", b"1", b"d", b'{"id":"3"}']),  # bad user id
        (b"4-0", [b"u", b"111", b"i", b"4"]),  # no payload
        entry(5, 5),
    ])
    assert socket.sent == ['{"id":"1"}', '{"id":"5"}']


def test_an_unsubscribed_socket_is_freed_without_the_cycle_collector() -> None:
    """Full collections are rare in the gateway (gc_policy): a closed socket must not wait."""
    hub = hub_module.Hub(None, Keys("unused"), metrics=process_metrics())  # type: ignore[arg-type]
    transport = FakeTransport()
    subscriber = hub.subscribe(111, transport)
    freed = weakref.ref(transport)  # held by the subscriber alone: freed with it
    del transport
    gc.disable()
    try:
        subscriber.connection_lost(None)  # the transport reports the socket closed
        del subscriber
        assert freed() is None
        assert hub.subscriber_count() == 0
    finally:
        gc.enable()


def test_no_event_frame_follows_the_close_frame() -> None:
    """Once the close frame is written (by us or in answer to the client's), events stop."""
    registry = CollectorRegistry()
    hub = hub_module.Hub(None, Keys("unused"), metrics=Metrics(registry))  # type: ignore[arg-type]

    def delivered() -> float:
        return registry.get_sample_value("paxyo_gateway_events_delivered_total") or 0.0

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        ours, theirs = FakeTransport(), FakeTransport()
        closed_by_us, closed_by_client = hub.subscribe(111, ours), hub.subscribe(111, theirs)
        closed_by_us.go_live(set())
        closed_by_client.go_live(set())
        hub.route([entry(1, 1)])
        closed_by_us.close_soon(CloseCode.GOING_AWAY)
        theirs.close = lambda: None  # type: ignore[attr-defined]
        closed_by_client.data_received(b"\x88\x82abcd" + bytes(
            a ^ b for a, b in zip(b"\x03\xe8", b"ab", strict=True)))  # masked close, 1000
        hub.route([entry(2, 2)])
        return ours.frames, theirs.frames

    ours, theirs = run(scenario())
    assert ours == [b'\x81\x0a{"id":"1"}', b"\x88\x16\x03\xe9server shutting down"]
    assert theirs == [b'\x81\x0a{"id":"1"}', b"\x88\x02\x03\xe8"]
    assert delivered() == 2


def test_hub_holds_live_events_during_replay_and_drops_what_replay_covered() -> None:
    """Deterministic interleavings of replay and live routing, on the hub alone."""

    async def scenario() -> tuple[list[str], list[str]]:
        hub = hub_module.Hub(None, Keys("unused"), metrics=process_metrics())  # type: ignore[arg-type]
        resumed, fresh = FakeTransport(), FakeTransport()
        during = hub.subscribe(111, resumed)
        # Routed while the replay is being sent: 5 was in the history, 6 came after it.
        hub.route([entry(5, 5), entry(6, 6), entry(7, 7, user_id=222)])
        during.go_live({4, 5}, stream_end="5-0")
        # The reader lagging: 5 and 6 were published before this history read (at 6-0).
        late = hub.subscribe(111, fresh)
        late.go_live(set(), stream_end="6-0")
        hub.route([entry(5, 8), entry(9, 9), entry(9, 10)])  # a repeat of 5, then 9 twice
        await asyncio.sleep(0.05)
        return resumed.sent, fresh.sent

    resumed, fresh = run(scenario())
    assert resumed == ['{"id":"6"}', '{"id":"9"}']
    assert fresh == ['{"id":"9"}']
