"""Gateways as real processes: SIGTERM closes sockets with 1001 and exits in time; a gateway
SIGKILLed under load loses no event for a client that resumes on another gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from paxyo.accounts import deposit
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.store.engine import open_engine
from tests.support import free_port, http_json
from wsgateway.auth import mint_token

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def start_gateway(settings, port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "PAXYO_REDIS_PREFIX": settings.redis_prefix, "PORT": str(port),
           "PAXYO_JWT_SECRET": settings.jwt_secret, "PAXYO_ADMIN_TOKEN": settings.admin_token}
    log = Path(settings.database_url.removeprefix("sqlite:///")).with_name(f"gw-{port}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "paxyo.cli", "gateway", "--host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if http_json("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"gateway did not start: {log.read_text()}")


def ws_url(settings, port: int, user_id: int, last_id: str | None = None) -> str:
    url = f"ws://127.0.0.1:{port}/ws?token={mint_token(settings.jwt_secret, user_id)}"
    return url + (f"&last_id={last_id}" if last_id else "")


def test_sigterm_closes_sockets_with_1001_and_exits_quickly(settings):
    port = free_port()
    proc = start_gateway(settings, port)

    async def scenario() -> tuple[int | None, float]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(ws_url(settings, port, 111)) as ws:
            hello = await asyncio.wait_for(ws.receive(), 5)
            assert orjson.loads(hello.data)["type"] == "hello"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return msg.data, time.monotonic() - started

    try:
        code, took = asyncio.run(scenario())
        assert code == 1001
        proc.wait(15)
        assert proc.returncode is not None and took < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_gateway_killed_under_load_loses_nothing_for_a_client_that_resumes_elsewhere(settings):
    port_a, port_b = free_port(), free_port()
    gw_a, gw_b = start_gateway(settings, port_a), start_gateway(settings, port_b)
    engine = open_engine(settings.database_url)
    relay = OutboxRelay(engine, redis.Redis.from_url(settings.redis_url), RelayConfig(
        Keys(settings.redis_prefix), settings.history_size, settings.history_ttl))
    published: list[str] = []
    stop = threading.Event()

    def publish() -> None:  # a steady stream of events for user 111 (and noise for 222)
        n = 0
        while not stop.is_set() and n < 60:
            for user in (111, 222):
                result = deposit(engine, user, Decimal("1.00"), f"load-{n}", 2)
                relay.publish_ids([result.event.outbox_id])
                if user == 111:
                    published.append(result.event.id)
            n += 1
            time.sleep(0.02)

    async def scenario() -> list[str]:
        seen: list[str] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(settings, port_a, 111)) as ws:
                await asyncio.wait_for(ws.receive(), 5)  # hello
                publisher.start()
                while len(seen) < 15:
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    seen.append(orjson.loads(msg.data)["id"])
                gw_a.kill()  # SIGKILL: no close frame, events in flight are lost on this socket
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:
                        msg = await asyncio.wait_for(ws.receive(), 2)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        seen.append(orjson.loads(msg.data)["id"])
            async with session.ws_connect(ws_url(settings, port_b, 111, seen[-1])) as ws:
                hello = orjson.loads((await asyncio.wait_for(ws.receive(), 5)).data)
                assert hello["recovered"] is True
                publisher.join(30)
                while len(seen) < len(published):
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    seen.append(orjson.loads(msg.data)["id"])
                with contextlib.suppress(asyncio.TimeoutError):
                    extra = await asyncio.wait_for(ws.receive(), 0.5)
                    seen.append(orjson.loads(extra.data)["id"])
        return seen

    publisher = threading.Thread(target=publish)
    try:
        seen = asyncio.run(scenario())
        assert len(published) == 60
        assert seen == published  # every event once, in order, across the kill
    finally:
        stop.set()
        if publisher.is_alive():
            publisher.join(30)
        for proc in (gw_a, gw_b):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        engine.dispose()
