"""The processes of one run: a Redis of its own (fsynced append-only file, restarted on the
same port), the provider simulator, a dispatcher, two workers and two gateways, each started
with the ``paxyo`` CLI and logging to its own file in the run's folder.

A process the campaign killed is expected to be down until the campaign restarts it; any
other exit is recorded as an unexpected death (with the end of its log) and the process is
restarted, so that one dead worker does not hide what else a run would find.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from paxyo.cli.private_redis import PrivateRedis, answers
from tests.support import free_port, http_json

ROOT = Path(__file__).resolve().parents[2]
SIM_KEY = "campaign-sim-key"
JWT_SECRET = "campaign-jwt-secret"
ADMIN_TOKEN = "campaign-admin-token"
POLL_INTERVAL = 1.5
LEASE_SECONDS = 6.0
PROVIDER_TIMEOUT = 2.0
WORKERS = 2
GATEWAYS = 2
START_TIMEOUT = 30.0
LOG_TAIL_LINES = 8


@dataclass
class Managed:
    name: str
    argv: list[str]
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    expected_down: bool = False
    starts: int = 0
    started_at: float = 0.0


@dataclass
class ProcessSet:
    run_dir: Path
    database_url: str
    seed: int
    redis_port: int = field(default_factory=free_port)
    sim_port: int = field(default_factory=free_port)
    gateway_ports: list[int] = field(default_factory=lambda: [free_port()
                                                             for _ in range(GATEWAYS)])
    deaths: list[str] = field(default_factory=list)
    redis_stopped_at: float | None = None

    def __post_init__(self) -> None:
        self.redis = PrivateRedis(self.redis_port, self.run_dir / "redis")
        self.processes: dict[str, Managed] = {}
        cli = [sys.executable, "-m", "paxyo.cli"]
        self._add("simulator", [*cli, "simulator", "--port", str(self.sim_port),
                                "--key", SIM_KEY, "--seed", str(self.seed)], self.sim_port)
        self._add("dispatcher", [*cli, "dispatcher"])
        for n in range(WORKERS):
            self._add(f"worker-{n}", [*cli, "worker"])
        for n, port in enumerate(self.gateway_ports):
            self._add(f"gateway-{n}", [*cli, "gateway", "--host", "127.0.0.1",
                                       "--port", str(port)], port)

    def _add(self, name: str, argv: list[str], port: int | None = None) -> None:
        self.processes[name] = Managed(name, argv, port)

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def gateway_url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[n]}"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "PAXYO_REDIS_PREFIX": f"campaign{self.seed}",
            "PAXYO_PROVIDER_SIM_URL": f"{self.sim_url}/api/v2",
            "PAXYO_PROVIDER_SIM_KEY": SIM_KEY,
            "PAXYO_POLL_INTERVAL": str(POLL_INTERVAL),
            "PAXYO_LEASE_SECONDS": str(LEASE_SECONDS),
            "PAXYO_PROVIDER_TIMEOUT": str(PROVIDER_TIMEOUT),
            "PAXYO_PROVIDER_ATTEMPTS": "2",
            "PAXYO_JWT_SECRET": JWT_SECRET,
            "PAXYO_ADMIN_TOKEN": ADMIN_TOKEN,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start_all(self) -> None:
        self.redis.start()
        for managed in self.processes.values():
            self._spawn(managed)
        self.wait_ready(START_TIMEOUT)

    def wait_ready(self, timeout: float) -> None:
        """Until the simulator and the gateways answer over HTTP."""
        deadline = time.monotonic() + timeout
        pending = [m for m in self.processes.values() if m.port is not None]
        while pending and time.monotonic() < deadline:
            pending = [m for m in pending if not self._answers(m)]
            for managed in pending:
                if managed.process is not None and managed.process.poll() is not None:
                    raise RuntimeError(f"{managed.name} exited at start:\n{self.log_tail(managed)}")
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"{[m.name for m in pending]} did not start in {timeout:.0f} s")

    def _answers(self, managed: Managed) -> bool:
        path = "/sim/stats" if managed.name == "simulator" else "/healthz"
        try:
            return http_json("GET", f"http://127.0.0.1:{managed.port}{path}")[0] == 200
        except OSError:
            return False

    def _spawn(self, managed: Managed) -> None:
        log = self.run_dir / f"{managed.name}.log"
        with open(log, "ab") as out:
            # Its own process group: a kill takes its children too (a worker's RQ scheduler
            # is a child process, which would otherwise outlive a SIGKILLed worker).
            managed.process = subprocess.Popen(
                managed.argv, cwd=ROOT, env=self.environment(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        managed.starts += 1
        managed.started_at = time.monotonic()
        managed.expected_down = False

    def kill(self, name: str) -> None:
        """SIGKILL a process; it stays down until :meth:`restart`."""
        managed = self.processes[name]
        managed.expected_down = True
        if managed.process is not None:
            _kill_group(managed.process)
            managed.process.wait()

    def restart(self, name: str) -> None:
        managed = self.processes[name]
        if managed.process is not None and managed.process.poll() is None:
            return
        self._spawn(managed)

    def stop_redis(self, hard: bool) -> None:
        """SIGKILL or SIGTERM the Redis server; its append-only file keeps what it had."""
        process = self.redis.process
        if process is None or process.poll() is not None:
            return
        self.redis_stopped_at = time.monotonic()
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_redis(self) -> None:
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()

    def redis_up(self) -> bool:
        return answers(self.redis.url, 0.5)

    def supervise(self) -> None:
        """Record and restart any process that died without the campaign killing it."""
        for managed in self.processes.values():
            process = managed.process
            if managed.expected_down or process is None or process.poll() is None:
                continue
            context = f" {time.monotonic() - managed.started_at:.1f} s after its start"
            if self.redis_stopped_at is not None:
                context += f", {time.monotonic() - self.redis_stopped_at:.1f} s after a Redis stop"
            self.deaths.append(f"{managed.name} exited with code {process.returncode} without "
                               f"being killed{context}; its log ends:\n{self.log_tail(managed)}")
            self._spawn(managed)

    def log_tail(self, managed: Managed) -> str:
        """The log's last lines, tracebacks' frames left out (their exception lines stay)."""
        log = self.run_dir / f"{managed.name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        lines = [line for line in lines if line.strip() and not line[0].isspace()]
        return "\n".join(f"    | {line[:300]}" for line in lines[-LOG_TAIL_LINES:])

    def stop_all(self) -> None:
        for managed in self.processes.values():
            if managed.process is not None:
                _kill_group(managed.process)
        for managed in self.processes.values():
            if managed.process is not None:
                managed.process.wait()
        self.stop_redis(hard=True)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every process of its group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
