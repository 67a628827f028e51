"""Test helpers: run an aiohttp app on a real port in a thread; talk to the simulator."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
import pytest
from aiohttp import web

REQUIRE_SERVICES = os.environ.get("PAXYO_REQUIRE_SERVICES") == "1"


def unavailable(message: str) -> NoReturn:
    """Skip a test whose outside dependency is missing; under PAXYO_REQUIRE_SERVICES=1 (CI),
    fail it instead."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (PAXYO_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """An aiohttp application served on 127.0.0.1 by its own event loop in a thread."""

    def __init__(self, app_factory: Callable[[], web.Application], port: int | None = None):
        self.app_factory = app_factory
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app_factory())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_json(method: str, url: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A plain HTTP request (urllib, no aiohttp) returning (status, decoded JSON body)."""
    data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return exc.code, raw.decode(errors="replace")


@dataclass
class SimulatorHandle:
    url: str
    key: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v2"

    def set_order(self, provider_order_id: str | int, **body: Any) -> None:
        status, reply = http_json("POST", f"{self.url}/sim/orders/{provider_order_id}", body)
        assert status == 200, reply

    def faults(self, **body: Any) -> None:
        status, reply = http_json("POST", f"{self.url}/sim/faults", body)
        assert status == 200, reply

    def stats_reset(self) -> None:
        status, reply = http_json("POST", f"{self.url}/sim/stats/reset")
        assert status == 200, reply

    def stats(self) -> dict[str, Any]:
        return http_json("GET", f"{self.url}/sim/stats")[1]
