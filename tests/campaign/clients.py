"""The campaign's clients: the panel's HTTP calls (retried across gateways through kills, as a
panel would, with the same body so that retries are idempotent), the simulator's control
calls, and one WebSocket client per user that reconnects and resumes with ``last_id``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from tests.campaign.invariants import ClientLog, Connection
from tests.campaign.processes import ADMIN_TOKEN, JWT_SECRET
from wsgateway.auth import mint_token

RETRY_FOR = 30.0  # seconds a call keeps trying through kills and restarts
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


class CallFailed(Exception):
    pass


class Api:
    """HTTP to the gateways' /v1 and to the simulator's control endpoints."""

    def __init__(self, session: aiohttp.ClientSession, gateways: list[str], sim_url: str,
                 rng: random.Random) -> None:
        self.session = session
        self.gateways = gateways
        self.sim_url = sim_url
        self.rng = rng
        self.retries = 0
        self.server_errors: list[str] = []

    async def v1(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A /v1 call on a random gateway, retried on another while none answers or 5xx."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + RETRY_FOR
        while True:
            url = self.rng.choice(self.gateways) + path
            try:
                status, reply = await self._request(method, url, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, reply = 0, repr(exc)
            if 0 < status < 500:
                return status, reply
            if status >= 500:
                self.server_errors.append(f"{method} {path}: HTTP {status} {str(reply)[:200]}")
            if time.monotonic() > deadline:
                raise CallFailed(f"{method} {path}: no answer for {RETRY_FOR:.0f} s ({reply})")
            self.retries += 1
            await asyncio.sleep(0.2)

    async def sim(self, path: str, body: Any) -> Any:
        status, reply = await self._request("POST", self.sim_url + path, body, {})
        if status != 200:
            raise CallFailed(f"simulator {path} {body}: HTTP {status} {reply}")
        return reply

    async def sim_stats(self) -> dict[str, Any]:
        async with self.session.get(self.sim_url + "/sim/stats") as resp:
            return orjson.loads(await resp.read())

    async def _request(self, method: str, url: str, body: Any,
                       headers: dict[str, str]) -> tuple[int, Any]:
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, url, data=data, headers={
                "Content-Type": "application/json", **headers}, timeout=REQUEST_TIMEOUT) as resp:
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp.status, raw.decode(errors="replace")


class SocketClient:
    """One user's WebSocket client: connects to a random gateway, resumes with the last id it
    saw, and records every connection for :func:`invariants.check_clients`."""

    def __init__(self, session: aiohttp.ClientSession, user_id: int,
                 gateway_ports: Callable[[], list[int]], rng: random.Random) -> None:
        self.session = session
        self.log = ClientLog(user_id)
        self.gateway_ports = gateway_ports
        self.rng = rng
        self.last_id: str | None = None
        self.drops = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and bool(self.log.connections) \
            and self.log.connections[-1].hello is not None

    async def drop(self) -> None:
        """Close the socket (a flaky network); the client reconnects and resumes."""
        if self._ws is not None and not self._ws.closed:
            self.drops += 1
            await self._ws.close()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            port = self.rng.choice(self.gateway_ports())
            url = (f"ws://127.0.0.1:{port}/ws?token="
                   f"{mint_token(JWT_SECRET, self.log.user_id, ttl=3600)}")
            if self.last_id is not None:
                url += f"&last_id={self.last_id}"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ConnectionError):
                async with self.session.ws_connect(url, heartbeat=None, timeout=5) as ws:
                    self._ws = ws
                    await self._listen(ws, Connection(self.last_id))
            self._ws = None
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def _listen(self, ws: aiohttp.ClientWebSocketResponse, conn: Connection) -> None:
        self.log.connections.append(conn)
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = orjson.loads(message.data)
            if data.get("type") == "hello":
                conn.hello = data
                if not data.get("recovered"):  # the client reloads over HTTP: start afresh
                    self.last_id = data.get("last_id")
            else:
                conn.events.append(data)
                self.last_id = data.get("id")
