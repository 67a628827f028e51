"""Proof on a real Prometheus: the dashboard's queries and the alert rules work on real data.

A gateway, a worker and a dispatcher run as real ``paxyo`` processes against the simulator
(orders move on their own); a real Prometheus (Debian's package) scrapes the gateway's
``/metrics`` every second. Then: ``promtool check rules`` and ``check metrics`` pass, every
dashboard query returns data, every alert expression parses, and a provider outage fires
``PaxyoProviderDown``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ServerThread, SimulatorHandle, free_port, http_json, unavailable

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana" / "paxyo-realtime.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
ADMIN = {"Authorization": "Bearer test-admin-token"}
JWT_SECRET = "test-jwt-secret-that-is-long-enough-0123456789"
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m",
             "$provider": ".*", "${provider}": ".*"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _ensure_prometheus() -> None:
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    try:
        proc = subprocess.run(["apt-get", "install", "-y", "prometheus"], capture_output=True,
                              text=True, timeout=600,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"apt-get install prometheus impossible: {exc}"
    else:
        if proc.returncode == 0 and shutil.which("prometheus"):
            return
        problem = f"apt-get install prometheus failed: {proc.stderr[-500:]}"
    unavailable(problem)


class Processes:
    """Real subprocesses, all killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait(what: str, check, timeout: float, interval: float = 0.5) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _sample(metrics_text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in an exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Prometheus:
    def __init__(self, tmp: Path, processes: Processes, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "paxyo", "scrape_interval": "1s",
                                "static_configs": [{"targets": [target]}]}],
        }))
        processes.start("prometheus", [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"], dict(os.environ))
        _wait("prometheus ready", lambda: _get(self.url + "/-/ready"), 60)

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return json.loads(_get(url))
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def alerts(self) -> list[dict[str, Any]]:
        return json.loads(_get(self.url + "/api/v1/alerts"))["data"]["alerts"]

    def alert_rules(self) -> list[dict[str, Any]]:
        """Every alerting rule Prometheus loaded, with its parsed expression."""
        groups = json.loads(_get(self.url + "/api/v1/rules?type=alert"))["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every panel target."""
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            queries.append((panel["title"], expr))
    return queries


def immediate_rules(tmp: Path) -> Path:
    """alerts.yml with every ``for`` set to 0s, so the test need not wait minutes."""
    text, count = re.subn(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", ALERTS.read_text())
    assert count >= 5, "alerts.yml: expected rules with a for: clause"
    path = tmp / "alerts-now.yml"
    path.write_text(text)
    return path


def _watch_websocket(url: str, stop: threading.Event, seen: list[dict]) -> None:
    """Keep one user's socket open and note what arrives (deliveries feed the latency panel)."""
    import aiohttp

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(url, heartbeat=10)
            except aiohttp.ClientError as exc:
                seen.append({"type": "connect-failed", "error": str(exc)})
                return
            async with ws:
                while not stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return
                    seen.append(json.loads(msg.data))

    asyncio.run(run())


@pytest.fixture
def system(tmp_path, redis_url, redis_prefix) -> Iterator[dict[str, Any]]:
    """Simulator (auto-advancing), gateway, worker and dispatcher processes, some orders."""
    from paxyo.store.migrate import upgrade
    from providers.simulator import create_simulator_app

    _ensure_prometheus()
    sim_server = ServerThread(lambda: create_simulator_app("sim-key", seed=11))
    sim_server.start()
    simulator = SimulatorHandle(sim_server.url, "sim-key")
    database_url = f"sqlite:///{tmp_path / 'paxyo.db'}"
    upgrade(database_url)
    port, worker_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "PAXYO_REDIS_PREFIX": redis_prefix, "PAXYO_QUEUE": f"{redis_prefix}-q",
           "PAXYO_PROVIDER_SIM_URL": simulator.api_url, "PAXYO_PROVIDER_SIM_KEY": "sim-key",
           "PAXYO_JWT_SECRET": JWT_SECRET, "PAXYO_ADMIN_TOKEN": "test-admin-token",
           "PAXYO_POLL_INTERVAL": "2", "PAXYO_PROVIDER_ATTEMPTS": "2",
           "PAXYO_PROVIDER_TIMEOUT": "3", "PAXYO_LOG_FORMAT": "json", "PORT": str(port)}
    processes = Processes(tmp_path)
    paxyo = [sys.executable, "-m", "paxyo.cli"]
    try:
        processes.start("gateway", [*paxyo, "gateway", "--host", "127.0.0.1"], env)
        base = f"http://127.0.0.1:{port}"
        _wait("gateway up", lambda: _get(base + "/healthz"), 30)
        processes.start("worker", [*paxyo, "worker", "--metrics-port", str(worker_port)], env)
        processes.start("dispatcher", [*paxyo, "dispatcher"], env)
        _seed_orders(base, simulator)
        yield {"base": base, "simulator": simulator, "processes": processes, "env": env,
               "worker_metrics": f"http://127.0.0.1:{worker_port}/metrics", "tmp": tmp_path}
    finally:
        processes.stop_all()
        sim_server.stop()


def _seed_orders(base: str, simulator: SimulatorHandle) -> None:
    for user in (111, 222):
        status, body = http_json("POST", f"{base}/v1/accounts/{user}/deposits",
                                 {"amount": "500.00", "reference": f"seed-{user}"}, ADMIN)
        assert status == 201, body
    for n in range(1, 31):
        provider_order_id = 90000 + n
        if n <= 3:  # refunds for sure, besides those the simulator's schedule brings
            simulator.set_order(provider_order_id, status="Canceled", remains=1000)
        else:
            simulator.set_order(provider_order_id, quantity=1000)
        status, body = http_json("POST", f"{base}/v1/orders", {
            "id": n, "user_id": 111 if n % 2 else 222, "provider": "sim",
            "provider_order_id": provider_order_id, "quantity": 1000, "charge": "10.00",
            "service": 1, "link": "https://example.com/p"}, ADMIN)
        assert status == 201, body


def test_dashboard_and_alerts_on_a_real_prometheus(system) -> None:
    from wsgateway.auth import mint_token

    base, processes = system["base"], system["processes"]
    started = time.monotonic()
    ws_seen: list[dict] = []
    ws_stop = threading.Event()
    ws_url = base.replace("http", "ws") + f"/ws?token={mint_token(JWT_SECRET, 111)}"
    ws_thread = threading.Thread(target=_watch_websocket, args=(ws_url, ws_stop, ws_seen),
                                 daemon=True)
    ws_thread.start()
    prometheus = Prometheus(system["tmp"], processes, base.split("//")[1],
                            immediate_rules(system["tmp"]))
    try:
        # real work: orders checked, refunds paid, all visible through the web's /metrics
        def worked() -> bool:
            text = _get(base + "/metrics").decode()
            return (_sample(text, "paxyo_refunds_total") >= 3
                    and _sample(text, "paxyo_order_status_transitions_total") >= 5
                    and _sample(text, 'paxyo_processes{kind="worker"}') >= 1)
        _wait("refunds and transitions in /metrics", worked, 90)
        time.sleep(8)  # a few more scrapes, so every rate() has two samples in its window

        # the worker's own port serves its own registry
        assert _sample(_get(system["worker_metrics"]).decode(), "paxyo_orders_checked_total") > 0

        # promtool: the rules and the exposition are clean
        rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)],
                               capture_output=True, text=True, timeout=60)
        assert rules.returncode == 0, rules.stdout + rules.stderr
        exposition = _get(base + "/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition,
                              capture_output=True, timeout=60)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
            (lint.stdout + lint.stderr).decode()

        # every dashboard query returns data
        empty = []
        for title, expr in dashboard_queries():
            reply = prometheus.query(expr)
            if reply.get("status") != "success" or not reply["data"]["result"]:
                empty.append(f"{title}: {expr} -> {reply}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        # every alert expression parses and evaluates (Prometheus loaded all of them)
        rules_loaded = prometheus.alert_rules()
        assert len(rules_loaded) == ALERTS.read_text().count("- alert:")
        for rule in rules_loaded:
            reply = prometheus.query(rule["query"])
            assert reply.get("status") == "success", (rule["name"], reply)
            assert rule["health"] == "ok", rule
        assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] in
                    ("PaxyoProviderDown", "PaxyoNoGatewayUp", "PaxyoDispatcherDown")]

        # a provider outage fires the provider alert
        system["simulator"].faults(error_rate=1.0)

        def provider_down() -> list[dict]:
            return [a for a in prometheus.alerts()
                    if a["labels"]["alertname"] == "PaxyoProviderDown"
                    and a["labels"].get("provider") == "sim" and a["state"] == "firing"]
        fired = _wait("PaxyoProviderDown firing", provider_down, 150, interval=1)
        assert fired[0]["labels"]["severity"] == "page"
        if os.environ.get("PAXYO_DASHBOARD_PNG"):  # docs: draw the panels from this run
            from monitoring.render import render_dashboard

            time.sleep(20)  # let the outage show on the charts
            now = time.time()
            render_dashboard(prometheus.url, Path(os.environ["PAXYO_DASHBOARD_PNG"]),
                             now - (time.monotonic() - started), now)
        # the WebSocket user really received live events through the gateway
        assert any(m.get("type") == "order.updated" for m in ws_seen), ws_seen[:3]
        delivered = prometheus.query("sum(paxyo_gateway_events_delivered_total)")
        assert float(delivered["data"]["result"][0]["value"][1]) > 0, delivered
        print(f"\nproof done in {time.monotonic() - started:.0f}s; websocket saw "
              f"{len(ws_seen)} messages")
    finally:
        ws_stop.set()
        ws_thread.join(5)
    logs = processes.log("worker") + processes.log("dispatcher")
    assert "Traceback" not in processes.log("gateway"), processes.log("gateway")[-3000:]
    assert re.search(r'"msg":"REFUND: \$10\.00 for Order #\d+ \(Canceled\)"', logs), logs[-3000:]
