"""Ship a process's metric registry to Redis so the web process can serve every process's metrics.

On Heroku only ``web`` receives HTTP, and RQ workers are many processes. So every process (web,
worker, dispatcher) writes a snapshot of its registry every :data:`PUSH_INTERVAL` seconds into
one Redis hash (``Keys.metrics``): field = a process id unique to this process start, value =
JSON ``{"at", "kind", "families"}``. :mod:`monitoring.collectors` merges the snapshots.

A process id is never reused (it ends in a random suffix), so a restarted worker starts a new
field instead of overwriting its predecessor's totals with zeros.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry

from paxyo.keys import Keys

log = logging.getLogger("monitoring.push")

PUSH_INTERVAL = 5.0  # seconds between snapshots of one process


def new_process_id(kind: str) -> str:
    """``kind:host:pid:random``; the host is Heroku's dyno name when there is one."""
    host = os.environ.get("DYNO") or socket.gethostname()
    return f"{kind}:{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def families_of(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The registry's metric families as plain data (``*_created`` samples left out)."""
    return [{"name": m.name, "type": m.type, "help": m.documentation,
             "samples": [[s.name, s.labels, s.value] for s in m.samples
                         if not s.name.endswith("_created")]}
            for m in registry.collect()]


def snapshot(registry: CollectorRegistry, kind: str, now: float | None = None) -> bytes:
    """One process's snapshot, as stored in the ``Keys.metrics`` hash."""
    return orjson.dumps({"at": time.time() if now is None else now, "kind": kind,
                         "families": families_of(registry)})


class MetricsPusher:
    """Writes this process's snapshot to Redis: on demand, or from a background thread."""

    def __init__(self, registry: CollectorRegistry, client: redis.Redis, keys: Keys, kind: str,
                 *, interval: float = PUSH_INTERVAL) -> None:
        self.registry = registry
        self.client = client
        self.keys = keys
        self.kind = kind
        self.interval = interval
        self.process_id = new_process_id(kind)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def push(self) -> None:
        """Write the current snapshot now (raises redis errors)."""
        self.client.hset(self.keys.metrics, self.process_id, snapshot(self.registry, self.kind))

    def push_quietly(self) -> bool:
        """Push, logging only the first failure and the recovery; True when it worked."""
        try:
            self.push()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("metrics push of %s failed, will retry: %s", self.process_id, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("metrics push of %s works again", self.process_id)
        self._failing = False
        return True

    def start(self) -> MetricsPusher:
        """Push every ``interval`` seconds from a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="paxyo-metrics-push", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and push a last time, so the final counts are not lost."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        self.push_quietly()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.push_quietly()
            self._stop.wait(self.interval)


def serve_process_metrics(registry: CollectorRegistry, port: int | None) -> None:
    """Serve this process's own registry on ``port`` too (``--metrics-port``), if given.

    Scrape either these ports or the web process's ``/metrics``, not both: the web process
    already includes this process's counts, so adding both up would count them twice.
    """
    if port is None:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("metrics port %d unavailable, serving through web /metrics only: %s", port, exc)
        return
    log.info("serving this process's metrics on :%d/metrics", port)
