"""A real browser against the real system: headless Debian Chromium driven by Playwright.

``paxyo demo`` runs in a subprocess (simulator, dispatcher, two RQ workers, gateway, webhook
sender) with a 3 s poll interval. The test opens the demo page,
reads what it says the system does, logs in as user 111 (whose seeded orders are still moving),
waits for the client's ``WebSocket connected``, places a test order, clicks Cancel (the
simulator now reports the order Canceled) and expects the refund toast and the new balance
within poll interval + 2 s of the click, no toast for the order's own placement, and no buttons
left on the finished row; then the same with Partial (70% remains, so $7.00 of $10.00 back).
It expects the Canceled and Partial events in the page's webhook panel too, delivered by
``paxyo webhooks run`` to the demo's receiver. The browser console must show no error (a
missing favicon was one).

The setup installs what it needs: Debian's ``chromium`` (apt-get) and Playwright for Python
(pip, into this interpreter's environment). Browsers are never downloaded by Playwright
(no ``playwright install``): it drives /usr/bin/chromium. When that is impossible the test
skips, or fails under PAXYO_REQUIRE_SERVICES=1.

PAXYO_DEMO_SCREENSHOT=<path> also saves a PNG of the page after the refund toasts there.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support import free_port, http_json, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
POLL_INTERVAL = 3.0
DEADLINE = POLL_INTERVAL + 2.0  # seconds from the click to the toast and the new balance
WEBHOOK_WAIT = 30.0  # seconds for a delivery to reach the page (no claim on the sender's speed)
STOP_GRACE = 15.0


class Unavailable(Exception):
    """The browser or Playwright cannot be installed here."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _install_chromium() -> None:
    if os.access(CHROMIUM, os.X_OK):
        return
    if not shutil.which("apt-get"):
        raise Unavailable(f"{CHROMIUM} is missing and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise Unavailable(f"{CHROMIUM} is missing and only root may apt-get install it")
    policy = _run(["apt-cache", "policy", "chromium"], 120).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        update = _run(["apt-get", "update"], 600)
        if update.returncode:
            raise Unavailable(f"apt-get update failed: {update.stderr.strip()[-500:]}")
    install = _run(["apt-get", "install", "-y", "chromium"], 1200)
    if install.returncode or not os.access(CHROMIUM, os.X_OK):
        raise Unavailable(f"apt-get install chromium failed: {install.stderr.strip()[-500:]}")


def _install_playwright():  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        pass
    pip = _run([sys.executable, "-m", "pip", "install", "playwright"], 900)
    if pip.returncode:
        raise Unavailable(f"pip install playwright failed: {pip.stderr.strip()[-500:]}")
    importlib.invalidate_caches()
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError as exc:
        raise Unavailable(f"playwright installed but not importable: {exc}") from None


@pytest.fixture(scope="module")
def playwright_api():  # type: ignore[no-untyped-def]
    try:
        _install_chromium()
        return _install_playwright()
    except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"real-browser test: {exc}")


# -- the system under test ------------------------------------------------------------------------

@dataclass
class DemoRun:
    url: str
    simulator: str  # base URL, without /api/v2
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (paxyo demo starts each child in its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the demo (it stops its children), then kill whatever is left after the grace."""
    children = _children_of(proc.pid)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)  # only still there if the demo could not stop it


@pytest.fixture
def demo_run(redis_url: str, tmp_path: Path) -> Iterator[DemoRun]:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {key: value for key, value in os.environ.items()
           if key != "DATABASE_URL" and not key.startswith("PAXYO_PROVIDER_")}
    env.update({"REDIS_URL": redis_url, "PAXYO_POLL_INTERVAL": str(POLL_INTERVAL),
                "PYTHONUNBUFFERED": "1"})
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "demo", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        simulator = _wait_ready(proc, log, port)
        yield DemoRun(f"http://127.0.0.1:{port}", simulator, log)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, port: int) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(r"Simulator:\s+(http://\S+?)/api/v2", text)
        if match and "Demo page:" in text:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/paxyo-realtime.js",
                                            timeout=5):
                    pass
            except urllib.error.HTTPError as exc:
                pytest.fail(f"the gateway does not serve /paxyo-realtime.js ({exc.code}): "
                            "is setup_websocket called by create_app?")
            return match.group(1)
        if proc.poll() is not None:
            pytest.fail(f"paxyo demo exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"paxyo demo did not start within 90 s:\n{log.read_text(errors='replace')[-4000:]}")


def _freeze_seeded_orders(run: DemoRun) -> int:
    """Stop user 111's seeded orders where they are and wait until the panel has caught up
    with them, so that from then on only the test's own orders move the balance. Returns how
    many were still moving (on their slow schedules) when frozen."""
    frozen = {}
    moving = 0
    for seeded in http_json("GET", f"{run.url}/demo/users/111/orders")[1]["orders"]:
        url = f"{run.simulator}/sim/orders/{seeded['provider_order_id']}"
        status, order = http_json("GET", url)
        assert status == 200, order
        moving += order["status"] in ("Pending", "In progress") and "schedule" in order
        assert http_json("POST", url, {"status": order["status"],
                                       "remains": order["remains"]})[0] == 200
        frozen[seeded["provider_order_id"]] = order["status"].lower()
    deadline = time.monotonic() + 4 * POLL_INTERVAL
    while True:
        orders = http_json("GET", f"{run.url}/demo/users/111/orders")[1]["orders"]
        behind = [o for o in orders if o["provider_order_id"] in frozen
                  and o["status"].lower() != frozen[o["provider_order_id"]]]
        if not behind:
            return moving
        assert time.monotonic() < deadline, f"seeded orders never caught up: {behind}"
        time.sleep(0.2)


def _server_balance(run: DemoRun, user_id: int) -> Decimal:
    status, body = http_json("GET", f"{run.url}/demo/users/{user_id}/orders")
    assert status == 200, body
    return Decimal(body["balance"])


# -- the test -------------------------------------------------------------------------------------

def test_refund_toast_and_balance_arrive_within_the_poll_interval(
        playwright_api, demo_run: DemoRun, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_api.expect
    console: list[str] = []
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.on("console", lambda message: console.append(message.text))
            page.on("console", lambda message: message.type == "error" and errors.append(
                f"{message.text} ({message.location.get('url')})"))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            try:
                moving = _freeze_seeded_orders(demo_run)
                assert moving >= 2, "the seeded orders were finished before anyone could look"
                page.goto(demo_run.url + "/")
                expect(page.locator("#login .lead")).to_contain_text(
                    "refunds canceled and partial orders")
                expect(page.locator("#login .try")).to_contain_text("Cancel or Partial")
                with page.expect_console_message(
                        lambda message: message.text == "WebSocket connected", timeout=15_000):
                    page.click("button[data-user='111']")
                expect(page.locator("#connection")).to_have_text("connected", timeout=10_000)

                timings, orders = {}, {}
                for action, word, refund in (("cancel", "canceled", Decimal("10.00")),
                                             ("partial", "partial", Decimal("7.00"))):
                    orders[action], timings[action] = _place_and_move(
                        page, expect, demo_run, action, word, refund)
                print(f"\nclick -> toast and balance (deadline {DEADLINE:g} s): "
                      + ", ".join(f"{a} {t:.2f} s" for a, t in timings.items()))
                _expect_webhook_delivery(page, expect, demo_run, orders["cancel"], "Canceled",
                                         "10.00")
                _expect_webhook_delivery(page, expect, demo_run, orders["partial"], "Partial",
                                         "7.00")
                shot = tmp_path / "demo.png"  # the whole page in one view, toasts included
                page.set_viewport_size({"width": 1100, "height": page.evaluate(
                    "document.documentElement.scrollHeight")})
                page.screenshot(path=str(shot))
                target = os.environ.get("PAXYO_DEMO_SCREENSHOT")
                if target:
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, target)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"))
                print("browser console:\n  " + "\n  ".join(console))
                print("paxyo demo output:\n" + demo_run.output()[-6000:])
                raise
        finally:
            browser.close()
    assert "WebSocket connected" in console
    assert errors == [], errors


def _place_and_move(page, expect, run: DemoRun, action: str, word: str,  # type: ignore[no-untyped-def]
                    refund: Decimal) -> tuple[dict, float]:
    """Place a $10.00 order, press ``action`` on its row; the order and seconds from the click
    to the result."""
    page.fill("#quantity", "1000")
    with page.expect_response(lambda r: r.url.endswith("/demo/orders")
                              and r.request.method == "POST") as placed:
        page.click("#place-button")
    order = placed.value.json()
    assert placed.value.status == 201, order
    row = page.locator(f"tr[data-order-id='{order['id']}']")
    expect(row).to_be_visible(timeout=5_000)
    balance = _server_balance(run, 111)  # after the debit; nothing else moves it now
    expect(page.locator("#balance")).to_have_text(f"${balance}", timeout=5_000)

    toast = page.locator(".toast", has_text=f"Order #{order['id']} {word}: ${refund} refunded")
    started = time.monotonic()
    row.locator(f"button[data-action='{action}']").click()

    def left_ms() -> float:
        return max(1.0, (DEADLINE - (time.monotonic() - started)) * 1000)

    expect(toast).to_have_text(f"Order #{order['id']} {word}: ${refund} refunded",
                               timeout=left_ms())
    expect(page.locator("#balance")).to_have_text(f"${balance + refund}", timeout=left_ms())
    elapsed = time.monotonic() - started
    assert elapsed <= DEADLINE, f"{action}: {elapsed:.2f} s > {DEADLINE} s"
    expect(row.locator(".status")).to_have_text(word.capitalize())
    expect(row.locator(".refunded")).to_have_text(f"${refund}")
    expect(row.locator("button")).to_have_count(0)  # finished: nothing left to press
    expect(row.locator(".actions")).to_have_text("final")
    # Events reach the page in order, so the placement's came before the refund: no toast.
    expect(page.locator(".toast", has_text=f"Order #{order['id']} pending")).to_have_count(0)
    assert _server_balance(run, 111) == balance + refund
    return order, elapsed


def _expect_webhook_delivery(page, expect, run: DemoRun, order: dict, status: str,  # type: ignore[no-untyped-def]
                             refund: str) -> None:
    """The event that moved ``order`` to ``status`` in the page's webhook panel, as the demo's
    receiver got it from ``paxyo webhooks run`` (signed, checked), and in its own list."""
    delivery = page.locator(f"#webhooks tbody tr[data-order-id='{order['id']}']",
                            has=page.locator(".wh-status", has_text=status))
    expect(delivery).to_have_count(1, timeout=WEBHOOK_WAIT * 1000)
    expect(delivery.locator(".wh-refund")).to_have_text(f"${refund}")
    expect(page.locator("#no-webhooks")).to_be_hidden()
    received = http_json("GET", f"{run.url}/demo/webhooks")[1]
    assert any(d["order_id"] == order["id"] and d["status"] == status
               and d["refund"] == refund for d in received["deliveries"]), received
    assert received["refused"] == 0, received
