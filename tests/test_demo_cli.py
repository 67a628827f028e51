"""`paxyo demo` as an operator runs it: on a machine without Redis it starts a private one,
serves the page and API, and Ctrl-C stops every child."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paxyo.cli.private_redis import answers
from tests.support import free_port, http_json

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def children_in(cwd: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry, "cwd").resolve() == cwd.resolve():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids



def start_demo(tmp_path: Path, port: int, env: dict[str, str],
               log: Path) -> subprocess.Popen[bytes]:
    """``paxyo demo`` with one worker, once its banner is out (the log is in ``log``)."""
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "demo", "--port", str(port),
                                 "--workers", "1"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "demo is running" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.2)
    except BaseException:
        demo.terminate()  # the demo stops its children on SIGTERM
        demo.wait(30)
        raise
    return demo


def test_demo_without_redis_starts_a_private_one_and_stops_cleanly(tmp_path):
    port, closed = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    env.pop("DATABASE_URL", None)
    log = tmp_path / "demo.log"
    demo = start_demo(tmp_path, port, env, log)
    try:
        text = log.read_text()
        assert "started a private one" in text
        assert f"http://127.0.0.1:{port}/" in text
        assert http_json("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200
        status, page = http_json("GET", f"http://127.0.0.1:{port}/demo/users/111/orders")
        assert status == 200 and page["orders"], page
        assert len(children_in(tmp_path)) >= 5  # demo, simulator, dispatcher, worker, web
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
        deadline = time.monotonic() + 10
        while children_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children_in(tmp_path) == []
        private_url = re.search(r"started a private one at (\S+)", text).group(1)
        assert not answers(private_url)  # the private Redis went with the demo
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in children_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_to_the_process_group_stops_the_demo_without_a_traceback(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group: the private Redis must
    not die before the workers, dispatcher and gateway have stopped."""
    port, closed = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    env.pop("DATABASE_URL", None)
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "demo", "--port", str(port),
                                 "--workers", "2"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "demo is running" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "started a private one" in log.read_text()
        assert len(children_in(tmp_path)) >= 7  # demo, Redis, simulator, dispatcher, 2 workers, web
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(30) == 0, log.read_text()[-4000:]
        deadline = time.monotonic() + 5
        while children_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children_in(tmp_path) == []
        text = log.read_text()
        assert "Traceback" not in text, text[-6000:]
        for sign in ("Redis unavailable", "without Redis", "Connection refused"):
            assert sign not in text, text[-6000:]  # Redis outlived every process using it
        assert "Stopping the demo" in text
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in children_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_demo_keys_are_its_ports_own_and_gone_after_it_stops(tmp_path, redis_url):
    """Two demos on one Redis (tests side by side, a shared machine) must not lead each
    other's dispatchers or delete each other's keys: each port has its own prefix."""
    import redis

    port = free_port()
    other = f"paxyo-demo-{free_port()}:marker"  # another demo's key: left alone
    client = redis.Redis.from_url(redis_url)
    client.set(other, "1", ex=120)
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("DATABASE_URL", None)
    log = tmp_path / "demo.log"
    demo = start_demo(tmp_path, port, env, log)
    try:
        deadline = time.monotonic() + 30
        while not list(client.scan_iter(match=f"paxyo-demo-{port}:*")):
            assert time.monotonic() < deadline, "the demo wrote no key under its prefix"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0, log.read_text()[-4000:]
        for pattern in (f"paxyo-demo-{port}:*", f"rq:*:paxyo-demo-{port}"):
            assert list(client.scan_iter(match=pattern)) == [], pattern
        assert client.get(other) == b"1"
    finally:
        client.delete(other)
        client.close()
        if demo.poll() is None:
            demo.kill()
        for pid in children_in(tmp_path):
            os.kill(pid, signal.SIGKILL)
