"""The issue's acceptance path on real processes: HTTP API, simulator, `paxyo check-once`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port, http_json

ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"Authorization": "Bearer e2e-admin-token"}
pytestmark = pytest.mark.slow


def wait_http(url, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_json("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def system(tmp_path, redis_url, redis_prefix):
    sim_port, web_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}",
           "REDIS_URL": redis_url, "PAXYO_REDIS_PREFIX": redis_prefix, "PORT": str(web_port),
           "PAXYO_PROVIDER_GODOFPANEL_URL": f"http://127.0.0.1:{sim_port}/api/v2",
           "PAXYO_PROVIDER_GODOFPANEL_KEY": "e2e-key", "PAXYO_ADMIN_TOKEN": "e2e-admin-token",
           "PAXYO_JWT_SECRET": "e2e-jwt-secret-of-at-least-32-bytes!"}
    cli = [sys.executable, "-m", "paxyo.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    procs = [subprocess.Popen([*cli, "simulator", "--port", str(sim_port), "--key", "e2e-key"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL),
             subprocess.Popen([*cli, "gateway", "--host", "127.0.0.1"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/sim/stats")
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        yield {"env": env, "cwd": tmp_path, "web": f"http://127.0.0.1:{web_port}",
               "sim": f"http://127.0.0.1:{sim_port}"}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def check_once(system, count=1):
    procs = [subprocess.Popen([sys.executable, "-m", "paxyo.cli", "check-once"],
                              env=system["env"], cwd=system["cwd"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [out for out, _ in outs]


def sim(system, pid, **body):
    assert http_json("POST", f"{system['sim']}/sim/orders/{pid}", body)[0] == 200


def test_http_orders_refunded_exactly_once_by_check_once(system):
    web = system["web"]
    assert http_json("POST", f"{web}/v1/accounts/111/deposits",
                     {"amount": "120.00", "reference": "pay-1"}, ADMIN)[0] == 201
    cases = {  # order id: (simulator state, expected refunded)
        201: ({"status": "Canceled", "remains": 1000}, "10.00"),
        202: ({"status": "Partial", "remains": 700}, "7.00"),
        203: ({"status": "Completed", "remains": 0}, "0.00"),
        204: ({"status": "cancelled", "remains": "0"}, "10.00"),
        205: ({"status": "Refunded", "remains": 1000}, "10.00"),
        206: ({"status": "partial", "remains": 5000}, "10.00"),
        207: ({"status": "Partial", "remains": -5}, "0.00"),
        208: ({"status": "Partial", "remains": "Unknown"}, "0.00"),
        209: ({"status": "Fail", "remains": 1000}, "0.00"),
        210: ({"entry": {"error": "Incorrect order ID"}}, "0.00"),
        211: ({"entry": "Incorrect order ID"}, "0.00"),
        212: ({"entry": {"charge": "1.0"}}, "0.00"),
    }
    for oid, (state, _) in cases.items():
        body = {"id": oid, "user_id": 111, "provider": "godofpanel",
                "provider_order_id": 23000 + oid, "quantity": 1000, "charge": "10.00",
                "service": 1, "link": "https://instagram.com/x"}
        status, reply = http_json("POST", f"{web}/v1/orders", body, ADMIN)
        assert status == 201, reply
        sim(system, 23000 + oid, **state)
    assert http_json("GET", f"{web}/v1/accounts/111", None, ADMIN)[1]["balance"] == "0.00"
    [out] = check_once(system)
    for oid, (_, refunded) in cases.items():
        status, order = http_json("GET", f"{web}/v1/orders/{oid}", None, ADMIN)
        assert status == 200
        assert order["refunded"] == refunded, (oid, order)
    assert "REFUND: $7.00 for Order #202 (Partial, 700 remains)" in out
    # twice more, at the same time, after fresh changes: no double credit
    before = http_json("GET", f"{web}/v1/accounts/111", None, ADMIN)[1]["balance"]
    sim(system, 23208, status="Partial", remains=250)
    sim(system, 23209, status="Canceled", remains=1000)
    outs = check_once(system, count=2)
    refunds = [line for out in outs for line in out.splitlines() if line.startswith("REFUND")]
    assert sorted(refunds) == ["REFUND: $10.00 for Order #209 (Canceled)",
                               "REFUND: $2.50 for Order #208 (Partial, 250 remains)"]
    after = http_json("GET", f"{web}/v1/accounts/111", None, ADMIN)[1]["balance"]
    assert (before, after) == ("47.00", "59.50")
