"""Gateway benchmark: the Paxyo gateway against Socket.IO + redis-streams-adapter, same load.

    /work/venv/bin/python bench/gateway.py                   # full run, about 8 minutes
    /work/venv/bin/python bench/gateway.py --quick           # about 1 minute
    /work/venv/bin/python bench/gateway.py --clients 10000 --rates 12500 --only paxyo

For each connection count C (``--clients``) and each server (``paxyo``: one ``paxyo gateway``
process; ``socketio``: one Node Socket.IO 4.8 process with @socket.io/redis-streams-adapter,
bench/socketio/server.js), the benchmark

1. starts the server and notes its RSS,
2. connects C WebSocket clients (``--sockets-per-user``, default 1: C users, one socket each),
   spread over ``--client-procs`` load-generator processes (aiohttp + uvloop); the same client
   code speaks both protocols (the gateway's JSON frames; Engine.IO 4 / Socket.IO 5 framing over
   a plain WebSocket, as socket.io-client with ``transports: ["websocket"]`` does), so the
   load generator costs the same on both sides of the comparison,
3. notes the server's RSS again (RSS per connection = growth / C),
4. for each rate R (``--rates``, events/s): a publisher process publishes R events/s, each to
   one user drawn at random, for ``--warmup`` + ``--duration`` seconds. Paxyo: XADD straight to
   the global event stream in the relay's format (fields u, i, t, d; pipelined every 2 ms).
   Socket.IO: ``io.to("u:<user>").emit(...)`` from a server-less Socket.IO instance with the
   same adapter (bench/socketio/publisher.js; node-redis pipelines the XADDs of a tick).
   Every event carries ``bench_ts`` (publish time, epoch µs); clients record
   ``received - bench_ts`` for events published inside the measured window, and the server's
   CPU time (utime + stime from /proc) is sampled at the window's edges.

Printed per run: delivery latency p50/p99/max (published -> received by the client),
deliveries per second, deliveries per CPU-second of the server process, the server's CPU in
cores, RSS per connection and lost deliveries. No assertions: figures only.

Everything (Redis, servers, publishers, clients) shares this machine's cores, so latency tails
are upper bounds; compare CPU per delivery at equal load. Loopback only. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIO_DIR = HERE / "socketio"
PYTHON = sys.executable
JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "bench-admin-token"
FIRST_USER = 1_000_001
STREAM_MAXLEN = 100_000
TICK = 0.002  # publisher pacing: every 2 ms, publish what is due
DRAIN = 2.0  # seconds after the last publish before clients report
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_KEY = "bench_ts"
BASELINE = "baseline"  # the server name of --baseline's gateway


def protocol(server: str) -> str:
    """The wire protocol a server speaks: ours (also the baseline's) or Socket.IO's."""
    return "socketio" if server == "socketio" else "paxyo"


# ---------------------------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------------------------

def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def run_queue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc schedstat).

    The machine, not the process, is what delays a process that waits here: on a shared
    machine this tells a slow server from a starved one.
    """
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
    return total / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(sorted_values: array, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---------------------------------------------------------------------------------------------
# load-generator process: ``gateway.py _client``
# ---------------------------------------------------------------------------------------------

class ClientStats:
    def __init__(self) -> None:
        self.win_start = 0
        self.win_end = 0
        self.latencies = array("q")
        self.received = 0
        self.closed: dict[str, int] = {}
        self.connected = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    def on_event(self, text: str) -> None:
        """Record one event frame: latency if its publish time is inside the window."""
        now = time.time_ns() // 1000
        self.received += 1
        k = text.rfind('"bench_ts":')
        if k < 0:
            return
        end = k + 11
        while text[end].isdigit():
            end += 1
        ts = int(text[k + 11:end])
        if self.win_start <= ts < self.win_end:
            self.latencies.append(now - ts)


async def _client_socket(session, kind: str, base: str, token: str, stats: ClientStats,
                         ready: asyncio.Semaphore, attempts: int = 5) -> None:
    """Connect (retrying as a real client would after e.g. 1013), then read until closed."""
    for attempt in range(attempts):
        ws = await _client_connect(session, kind, base, token, stats, ready,
                                   last=attempt == attempts - 1)
        if ws is not None:
            break
        await asyncio.sleep(0.2 * 2 ** attempt * random.random())
    else:
        return
    await _client_read(ws, kind, stats)


async def _client_connect(session, kind: str, base: str, token: str, stats: ClientStats,
                          ready: asyncio.Semaphore, last: bool):
    import aiohttp

    ws = None
    try:
        async with ready:
            if kind == "paxyo":
                ws = await session.ws_connect(f"{base}/ws?token={token}", autoping=True,
                                              max_msg_size=0, timeout=aiohttp.ClientWSTimeout(
                                                  ws_receive=None, ws_close=5.0))
                hello = await asyncio.wait_for(ws.receive(), 30)
                if hello.type is not aiohttp.WSMsgType.TEXT or '"hello"' not in hello.data:
                    raise ConnectionError(f"no hello: {hello.type} {str(hello.data)[:80]}")
            else:
                ws = await session.ws_connect(f"{base}/socket.io/?EIO=4&transport=websocket",
                                              autoping=True, max_msg_size=0,
                                              timeout=aiohttp.ClientWSTimeout(
                                                  ws_receive=None, ws_close=5.0))
                opened = await asyncio.wait_for(ws.receive(), 30)
                if opened.type is not aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
                    raise ConnectionError(f"no engine.io open: {str(opened.data)[:80]}")
                await ws.send_str(f'40{{"token":"{token}"}}')
                ack = await asyncio.wait_for(ws.receive(), 30)
                if ack.type is not aiohttp.WSMsgType.TEXT or not ack.data.startswith("40"):
                    raise ConnectionError(f"socket.io connect refused: {str(ack.data)[:80]}")
        stats.connected += 1
        return ws
    except Exception as exc:
        name = type(exc).__name__ + (f": {exc}"[:100] if str(exc) else "")
        stats.errors[name] = stats.errors.get(name, 0) + 1
        if last:
            stats.failed += 1
        if ws is not None:
            await ws.close()
        return None


async def _client_read(ws, kind: str, stats: ClientStats) -> None:
    import aiohttp

    on_event = stats.on_event
    text_type = aiohttp.WSMsgType.TEXT
    try:
        if kind == "paxyo":
            async for msg in ws:
                if msg.type is text_type:
                    on_event(msg.data)
        else:
            async for msg in ws:
                if msg.type is text_type:
                    data = msg.data
                    if data.startswith("42"):
                        on_event(data)
                    elif data == "2":  # engine.io ping
                        await ws.send_str("3")
    except Exception:
        pass
    code = str(ws.close_code)
    stats.closed[code] = stats.closed.get(code, 0) + 1


async def client_main(args: argparse.Namespace) -> None:
    import aiohttp

    from wsgateway.auth import mint_token

    raise_nofile(args.sockets + 1024)
    stats = ClientStats()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=False)
    session = aiohttp.ClientSession(connector=connector)
    tasks: list[asyncio.Task] = []
    tokens: dict[int, str] = {}

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd, *rest = line.split()
            if cmd == "connect":
                sem = asyncio.Semaphore(args.concurrency)
                for j in range(args.sockets):
                    user = args.first_user + j // args.sockets_per_user
                    if user not in tokens:
                        tokens[user] = mint_token(JWT_SECRET, user, ttl=7200)
                    tasks.append(asyncio.create_task(_client_socket(
                        session, args.kind, args.base, tokens[user], stats, sem)))
                t0 = time.monotonic()
                while stats.connected + stats.failed < args.sockets:
                    await asyncio.sleep(0.05)
                    if time.monotonic() - t0 > args.connect_timeout:
                        break
                reply({"connected": stats.connected, "failed": stats.failed,
                       "errors": stats.errors, "seconds": round(time.monotonic() - t0, 2)})
            elif cmd == "window":
                stats.win_start, stats.win_end = int(rest[0]), int(rest[1])
                stats.latencies = array("q")
                stats.received = 0
                reply({"ok": True})
            elif cmd == "collect":  # each load generator writes its own file
                path = f"{rest[0]}.{os.getpid()}"
                with open(path, "wb") as f:
                    stats.latencies.tofile(f)
                reply({"path": path, "in_window": len(stats.latencies),
                       "received": stats.received,
                       "closed": stats.closed,
                       "open": stats.connected - sum(stats.closed.values())})
            elif cmd == "quit":
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


# ---------------------------------------------------------------------------------------------
# publisher for the Paxyo side: ``gateway.py _publish``
# ---------------------------------------------------------------------------------------------

def publish_main(args: argparse.Namespace) -> None:
    import orjson
    import redis

    client = redis.Redis.from_url(args.redis_url)
    rng = random.Random(args.seed)
    total = round(args.rate * args.seconds)
    win_start, win_end = args.win_start, args.win_end
    stream = f"{args.prefix}:events"
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.monotonic()
    sent = in_window = 0
    # Per in-window event: publish time stamp -> its pipeline's XADDs acknowledged (µs). A
    # starved publisher holds stamped events; this tells that delay from the server's.
    held = array("q")
    while sent < total:
        due = min(total, int((time.monotonic() - start) * args.rate))
        if due > sent:
            pipe = client.pipeline(transaction=False)
            stamps = []
            for n in range(sent, due):
                user = args.first_user + int(rng.random() * args.users)
                outbox_id = args.first_id + n
                ts = time.time_ns() // 1000
                if win_start <= ts < win_end:
                    in_window += 1
                    stamps.append(ts)
                payload = orjson.dumps({
                    "type": "order.updated", "id": str(outbox_id).zfill(16),
                    "order_id": 100000 + outbox_id, "user_id": user, "status": "Partial",
                    "previous_status": "In progress", "remains": 700, "quantity": 1000,
                    "refund": "7.00", "balance": "22.00", "at": "2025-12-14T19:15:02Z",
                    BENCH_KEY: ts})
                pipe.xadd(stream, {"u": user, "i": outbox_id, "t": ts // 1000, "d": payload},
                          maxlen=STREAM_MAXLEN, approximate=True)
            pipe.execute()
            done = time.time_ns() // 1000
            held.extend(done - ts for ts in stamps)
            sent = due
        time.sleep(TICK)
    held = array("q", sorted(held))
    print(json.dumps({"sent": sent, "in_window": in_window,
                      "seconds": round(time.monotonic() - start, 3),
                      "held_p99_ms": percentile(held, 0.99) / 1000,
                      "held_max_ms": (held[-1] / 1000) if held else None}), flush=True)


# ---------------------------------------------------------------------------------------------
# orchestrator
# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    clients: int
    rate: int
    connected: int = 0
    connect_seconds: float = 0.0
    expected: int = 0
    delivered: int = 0
    seconds: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    deliveries_per_s: float = 0.0
    server_cpu_s: float = 0.0
    server_sys_s: float = 0.0  # of which kernel time (stime)
    deliveries_per_cpu_s: float = 0.0
    redis_cpu_s: float | None = None
    clients_cpu_s: float = 0.0
    publisher_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # busy CPU on the machine outside the benchmark's processes
    # Seconds spent runnable but waiting for a CPU in the window (schedstat), all threads.
    server_wait_s: float = 0.0
    clients_wait_s: float = 0.0
    publisher_wait_s: float = 0.0
    # p99 seen by each load generator: a server stall delays all of them alike (every batch
    # goes to all), a starved load generator only its own events.
    p99_per_client_ms: list = field(default_factory=list)
    # Our publisher only: stamp -> XADD acknowledged, p99 and max (a starved publisher's share).
    publisher_held_p99_ms: float | None = None
    publisher_held_max_ms: float | None = None
    load_start: float = 0.0  # the machine's 1-minute load average at the window's edges
    load_end: float = 0.0
    rss_per_conn_kb: float = 0.0
    rss_mb: float = 0.0
    closed: dict = field(default_factory=dict)
    note: str = ""
    rep: int = 0  # which repeat (--repeat) this run belongs to

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.delivered)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="paxyo-gwbench-"))
        self.procs: list[subprocess.Popen] = []
        self.prefix = f"gwbench{os.getpid()}"
        self.redis_url = args.redis_url
        self.redis_pid: int | None = None
        self.next_id = 1
        self.rep = 0
        self.results: list[Result] = []

    # -- processes ------------------------------------------------------------------------------

    def spawn(self, cmd: list[str], *, env: dict | None = None, stdin=None, stdout=None,
              cwd: Path | None = None, log: str | None = None) -> subprocess.Popen:
        err = open(self.tmp / f"{log}.log", "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdin=stdin,
                                stdout=stdout if stdout is not None else err, stderr=err,
                                cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def cleanup(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=5.0)
        if self.redis_pid is None and self.redis_url:
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(self.redis_url)
                keys = list(client.scan_iter(f"{self.prefix}*"))
                if keys:
                    client.delete(*keys)
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        raise_nofile(max(self.args.clients) + 4096)
        if not self.redis_url:
            redis_server = shutil.which("redis-server")
            if redis_server is None:
                self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            else:
                port = free_port()
                proc = self.spawn([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
                                  log="redis")
                self.redis_pid = proc.pid
                self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.redis_url).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.env = {
            "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.db'}",
            "REDIS_URL": self.redis_url,
            "PAXYO_REDIS_PREFIX": self.prefix,
            "PAXYO_JWT_SECRET": JWT_SECRET,
            "PAXYO_ADMIN_TOKEN": ADMIN_TOKEN,
            "PAXYO_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
        done = subprocess.run([PYTHON, "-m", "paxyo.cli", "db", "upgrade"], cwd=REPO,
                              env={**os.environ, **self.env}, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"paxyo db upgrade failed:\n{done.stdout}{done.stderr}")
        if self.args.baseline:
            self.setup_baseline()
        adapter = SIO_DIR / "node_modules" / "@socket.io" / "redis-streams-adapter"
        if "socketio" in self.args.servers and not adapter.exists():
            print("installing bench/socketio (npm install) ...", flush=True)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=SIO_DIR,
                           check=True, stdout=subprocess.DEVNULL)

    def setup_baseline(self) -> None:
        """The --baseline revision's tree (git archive), with its own migrated database."""
        tree = self.tmp / "baseline"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", self.args.baseline],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        self.baseline_env = {**self.env, "DATABASE_URL": f"sqlite:///{self.tmp / 'base.db'}",
                             "PYTHONPATH": str(tree)}
        done = subprocess.run([PYTHON, "-m", "paxyo.cli", "db", "upgrade"], cwd=tree,
                              env={**os.environ, **self.baseline_env}, capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"baseline db upgrade failed:\n{done.stdout}{done.stderr}")
        self.baseline_tree = tree

    # -- servers --------------------------------------------------------------------------------

    def start_server(self, server: str, port: int) -> subprocess.Popen:
        if server == BASELINE:
            proc = self.spawn([PYTHON, "-m", "paxyo.cli", "gateway", "--host", "127.0.0.1"],
                              env={**self.baseline_env, "PORT": str(port)},
                              cwd=self.baseline_tree, log="baseline")
            url = f"http://127.0.0.1:{port}/healthz"
        elif server == "paxyo":
            cmd = (self.args.gateway_cmd.split() if self.args.gateway_cmd
                   else [PYTHON, "-m", "paxyo.cli", "gateway"])
            proc = self.spawn([*cmd, "--host", "127.0.0.1"], env={**self.env, "PORT": str(port)},
                              cwd=REPO, log="gateway")
            url = f"http://127.0.0.1:{port}/healthz"
        else:
            proc = self.spawn(["node", "server.js"], cwd=SIO_DIR, log="socketio", env={
                "PORT": str(port), "REDIS_URL": self.redis_url,
                "SIO_STREAM": f"{self.prefix}:sio", "PAXYO_JWT_SECRET": JWT_SECRET})
            url = None
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server} server exited with {proc.returncode}; "
                                   f"see {self.tmp} (--keep-logs)")
            try:
                if url:
                    urllib.request.urlopen(url, timeout=1).read()
                else:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server} server did not answer on {port}") from None
                time.sleep(0.1)
        return proc

    def start_clients(self, server: str, port: int, count: int) -> list[subprocess.Popen]:
        procs = []
        n = self.args.client_procs
        spu = self.args.sockets_per_user
        users_total = (count + spu - 1) // spu
        per = [users_total // n + (1 if i < users_total % n else 0) for i in range(n)]
        first_user = FIRST_USER
        left = count
        for users in per:
            sockets = min(left, users * spu)
            left -= sockets
            if sockets <= 0:
                continue
            procs.append(self.spawn(
                [PYTHON, str(Path(__file__).resolve()), "_client", "--kind", protocol(server),
                 "--base", f"http://127.0.0.1:{port}", "--sockets", str(sockets),
                 "--sockets-per-user", str(spu), "--first-user", str(first_user),
                 "--concurrency", str(self.args.connect_concurrency)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, log="clients"))
            first_user += users
        return procs

    @staticmethod
    def ask(procs: list[subprocess.Popen], line: str) -> list[dict]:
        for p in procs:
            p.stdin.write((line + "\n").encode())
            p.stdin.flush()
        out = []
        for p in procs:
            answer = p.stdout.readline()
            if not answer:
                raise RuntimeError("a load-generator process exited; see --keep-logs")
            out.append(json.loads(answer))
        return out

    def publisher(self, server: str, rate: int, users: int, start_at: float,
                  win: tuple[int, int], seconds: float) -> subprocess.Popen:
        first_id = self.next_id
        self.next_id += round(rate * seconds) + 1000
        if protocol(server) == "paxyo":
            cmd = [PYTHON, str(Path(__file__).resolve()), "_publish", "--redis-url",
                   self.redis_url, "--prefix", self.prefix, "--rate", str(rate),
                   "--seconds", str(seconds), "--users", str(users), "--first-user",
                   str(FIRST_USER), "--first-id", str(first_id), "--start-at", repr(start_at),
                   "--win-start", str(win[0]), "--win-end", str(win[1]), "--seed", str(rate)]
            return self.spawn(cmd, stdout=subprocess.PIPE, cwd=REPO, log="publisher")
        cmd = ["node", "publisher.js", "--rate", str(rate), "--seconds", str(seconds), "--users",
               str(users), "--first-user", str(FIRST_USER), "--first-id", str(first_id),
               "--start-at", str(int(start_at * 1000)), "--win-start", str(win[0]),
               "--win-end", str(win[1]), "--seed", str(rate)]
        return self.spawn(cmd, stdout=subprocess.PIPE, cwd=SIO_DIR, log="publisher",
                          env={"REDIS_URL": self.redis_url, "SIO_STREAM": f"{self.prefix}:sio"})

    # -- one server, one connection count -------------------------------------------------------

    def run_stage(self, server: str, count: int) -> None:
        args = self.args
        port = free_port()
        srv = self.start_server(server, port)
        clients: list[subprocess.Popen] = []
        try:
            time.sleep(1.0)
            rss0 = rss_bytes(srv.pid)
            clients = self.start_clients(server, port, count)
            answers = self.ask(clients, "connect")
            connected = sum(a["connected"] for a in answers)
            connect_s = max(a["seconds"] for a in answers)
            errors: dict[str, int] = {}
            for a in answers:
                for k, v in a["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            print(f"  {server:8s} C={count}: {connected} connected in {connect_s:.1f}s"
                  + (f", {count - connected} failed" if connected < count else "")
                  + (f" (attempts refused, then retried: {errors})" if errors else ""),
                  flush=True)
            time.sleep(args.settle)
            rss1 = rss_bytes(srv.pid)
            users = (count + args.sockets_per_user - 1) // args.sockets_per_user
            for rate in args.rates:
                result = Result(server, count, rate, connected=connected, rep=self.rep,
                                connect_seconds=connect_s,
                                rss_per_conn_kb=(rss1 - rss0) / max(connected, 1) / 1024,
                                rss_mb=rss1 / 2**20)
                self.measure(result, srv, clients, rate, users)
                self.results.append(result)
                print("    " + row_text(result), flush=True)
        finally:
            if clients:
                with contextlib.suppress(Exception):
                    for p in clients:
                        p.stdin.write(b"quit\n")
                        p.stdin.flush()
                for p in clients:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(15)
                    self.stop(p)
            self.stop(srv)

    def measure(self, result: Result, srv: subprocess.Popen, clients: list[subprocess.Popen],
                rate: int, users: int) -> None:
        args = self.args
        seconds = args.warmup + args.duration + 0.5
        start_at = time.time() + 1.5  # publisher start-up (node boot, imports)
        win = (int((start_at + args.warmup) * 1e6),
               int((start_at + args.warmup + args.duration) * 1e6))
        self.ask(clients, f"window {win[0]} {win[1]}")
        pub = self.publisher(result.server, rate, users, start_at, win, seconds)
        watched = {"server": srv.pid, "publisher": pub.pid,
                   **{f"client{i}": p.pid for i, p in enumerate(clients)}}
        if self.redis_pid:
            watched["redis"] = self.redis_pid
        time.sleep(max(0.0, win[0] / 1e6 - time.time()))
        profiler = None
        if args.profile and (result.clients, rate) in args.profile and result.server == "paxyo":
            out = Path(args.profile_dir).resolve() / f"gateway-C{result.clients}-R{rate}.txt"
            py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
            profiler = self.spawn([py_spy, "record", "--pid", str(srv.pid), "--duration",
                                   str(int(args.duration)), "--rate", "250", "--nonblocking",
                                   "--format", "raw", "-o", str(out)], log="py-spy")
            print(f"    py-spy -> {out}", flush=True)
        before = {k: cpu_split(pid) for k, pid in watched.items()}
        waits0 = {k: run_queue_wait(pid) for k, pid in watched.items()}
        result.load_start = os.getloadavg()[0]
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        time.sleep(max(0.0, win[1] / 1e6 - time.time()))
        after = {k: cpu_split(pid) for k, pid in watched.items()}
        waits = {k: run_queue_wait(pid) - waits0[k] for k, pid in watched.items()}
        result.load_end = os.getloadavg()[0]
        busy1 = machine_busy_seconds()
        measured = time.monotonic() - t0
        try:
            pub_out, _ = pub.communicate(timeout=seconds + 30)
        finally:
            self.stop(pub)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
            self.stop(profiler)
        pub_report = json.loads(pub_out.decode().strip().splitlines()[-1])
        time.sleep(DRAIN)
        lat = array("q")
        closed: dict[str, int] = {}
        for report in self.ask(clients, f"collect {self.tmp / 'lat'}"):
            part = array("q")
            with open(report["path"], "rb") as f:
                part.frombytes(f.read())
            os.unlink(report["path"])
            lat.extend(part)
            result.p99_per_client_ms.append(percentile(array("q", sorted(part)), 0.99) / 1000)
            for k, v in report["closed"].items():
                closed[k] = closed.get(k, 0) + v
        lat = array("q", sorted(lat))
        cpu = {k: sum(after[k]) - sum(before[k]) for k in watched}
        result.seconds = measured
        result.expected = pub_report["in_window"] * args.sockets_per_user
        result.publisher_held_p99_ms = pub_report.get("held_p99_ms")
        result.publisher_held_max_ms = pub_report.get("held_max_ms")
        result.delivered = len(lat)
        result.p50_ms = percentile(lat, 0.50) / 1000
        result.p99_ms = percentile(lat, 0.99) / 1000
        result.max_ms = (lat[-1] / 1000) if lat else float("nan")
        result.deliveries_per_s = len(lat) / args.duration
        result.server_cpu_s = cpu["server"]
        result.server_sys_s = after["server"][1] - before["server"][1]
        result.deliveries_per_cpu_s = len(lat) / cpu["server"] if cpu["server"] > 0 else 0.0
        result.redis_cpu_s = cpu.get("redis")
        result.clients_cpu_s = sum(v for k, v in cpu.items() if k.startswith("client"))
        result.publisher_cpu_s = cpu["publisher"]
        result.closed = closed
        result.other_cpu_s = max(0.0, busy1 - busy0 - sum(cpu.values()))
        result.server_wait_s = waits["server"]
        result.clients_wait_s = sum(v for k, v in waits.items() if k.startswith("client"))
        result.publisher_wait_s = waits["publisher"]

    # -- main -----------------------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        self.setup()
        print(f"gateway benchmark: clients {args.clients}, rates {args.rates} events/s, "
              f"{args.sockets_per_user} socket(s) per user, warm-up {args.warmup}s + "
              f"{args.duration}s measured, servers {args.servers}; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.2f}, redis {self.redis_url}", flush=True)
        for count in args.clients:
            for rep in range(args.repeat):
                self.rep = rep
                # Alternate which server goes first, so drift on the machine favours neither.
                for server in args.servers if rep % 2 == 0 else args.servers[::-1]:
                    self.run_stage(server, count)
        print()
        print(table_text(self.results, args))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) | {"lost": r.lost}
                                                   for r in self.results], indent=2))
        if args.markdown:
            Path(args.markdown).write_text(table_markdown(self.results, args))


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def row_text(r: Result) -> str:
    return (f"{r.server:8s} C={r.clients:<6d} {r.rate:>6d} ev/s: p50 {r.p50_ms:7.1f} ms, "
            f"p99 {r.p99_ms:7.1f} ms ("
            + "/".join(f"{v:.1f}" for v in r.p99_per_client_ms) + " per load generator), "
            f"max {r.max_ms:7.1f} ms, {r.deliveries_per_s:8.0f} deliv/s, "
            f"{r.deliveries_per_cpu_s:8.0f} deliv/CPU-s (server {r.server_cpu_s / r.seconds:.2f} "
            f"cores, {r.server_sys_s / max(r.server_cpu_s, 1e-9):.0%} kernel), "
            f"RSS/conn {r.rss_per_conn_kb:5.1f} KB, lost {r.lost}"
            + (f", closed {r.closed}" if r.closed else "")
            + (f", publisher held events p99 {r.publisher_held_p99_ms:.1f} ms, max "
               f"{r.publisher_held_max_ms:.1f} ms before Redis had them"
               if r.publisher_held_max_ms is not None else "")
            + f" [CPU cores: clients {r.clients_cpu_s / r.seconds:.2f}, publisher "
              f"{r.publisher_cpu_s / r.seconds:.2f}"
            + (f", redis {r.redis_cpu_s / r.seconds:.2f}" if r.redis_cpu_s is not None else "")
            + f", everything else {r.other_cpu_s / r.seconds:.2f}]"
            + f" [waiting for a CPU, ms/s: server {r.server_wait_s / r.seconds * 1000:.0f}, "
              f"clients {r.clients_wait_s / r.seconds * 1000:.0f}, publisher "
              f"{r.publisher_wait_s / r.seconds * 1000:.0f}] "
              f"[load average {r.load_start:.1f} -> {r.load_end:.1f}]")


def _medians(results: list[Result]) -> list[Result]:
    """Per (server, C, rate): the run with the median deliveries per CPU-second (--repeat)."""
    groups: dict[tuple[str, int, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.clients, r.rate), []).append(r)
    picked = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.deliveries_per_cpu_s)
        picked.append(runs[(len(runs) - 1) // 2])
    return picked


def _paired_ratios(results: list[Result], clients: int, rate: int,
                   ours: str = "paxyo") -> list[float]:
    """Ours / Socket.IO deliveries per CPU-second, one per repeat that ran both."""
    by_rep = {(r.server, r.rep): r for r in results if (r.clients, r.rate) == (clients, rate)}
    return [by_rep[(ours, rep)].deliveries_per_cpu_s / peer.deliveries_per_cpu_s
            for (server, rep), peer in by_rep.items()
            if server == "socketio" and (ours, rep) in by_rep and peer.deliveries_per_cpu_s]


def _rows(results: list[Result]) -> list[tuple[Result, Result | None]]:
    """(ours, Socket.IO's) per case; the baseline's rows are found by :func:`_baseline`."""
    medians = _medians(results)
    by_key = {(r.server, r.clients, r.rate): r for r in medians}
    rows = []
    for r in medians:
        if r.server == "paxyo":
            rows.append((r, by_key.get(("socketio", r.clients, r.rate))))
        elif r.server == BASELINE:
            if ("paxyo", r.clients, r.rate) not in by_key:
                rows.append((r, by_key.get(("socketio", r.clients, r.rate))))
        elif ("paxyo", r.clients, r.rate) not in by_key and \
                (BASELINE, r.clients, r.rate) not in by_key:
            rows.append((r, None))
    return rows


def _baseline(results: list[Result], r: Result) -> Result | None:
    if r.server != "paxyo":
        return None
    for b in _medians(results):
        if (b.server, b.clients, b.rate) == (BASELINE, r.clients, r.rate):
            return b
    return None


COLUMNS = ("C", "ev/s", "server", "p50 ms", "p99 ms", "max ms", "deliv/s", "deliv/CPU-s",
           "srv cores", "srv wait ms/s", "other cores", "load", "RSS/conn KB", "lost",
           "ours/sio CPU eff.")
UNEQUAL = "!"  # marks a ratio where a server lost deliveries: not at equal load


def _equal_load(r: Result, peer: Result) -> bool:
    return r.lost == 0 and peer.lost == 0 and r.delivered > 0 and peer.delivered > 0


def _cells(r: Result, peer: Result | None, first: bool,
           paired: list[float] | None = None) -> list[str]:
    ratio = ""
    if first and peer is not None and peer.deliveries_per_cpu_s:
        ratio = f"{r.deliveries_per_cpu_s / peer.deliveries_per_cpu_s:.2f}x"
        if paired and len(paired) > 1:
            ratio += f" ({min(paired):.2f}-{max(paired):.2f}x)"
        if not _equal_load(r, peer):
            ratio += f" {UNEQUAL}"
    return [str(r.clients) if first else "", str(r.rate) if first else "", r.server,
            f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.0f}", f"{r.deliveries_per_s:.0f}",
            f"{r.deliveries_per_cpu_s:.0f}", f"{r.server_cpu_s / max(r.seconds, 1e-9):.2f}",
            f"{r.server_wait_s / max(r.seconds, 1e-9) * 1000:.0f}",
            f"{r.other_cpu_s / max(r.seconds, 1e-9):.2f}",
            f"{r.load_start:.1f}-{r.load_end:.1f}",
            f"{r.rss_per_conn_kb:.1f}", str(r.lost), ratio]


def _all_rows(results: list[Result]) -> list[list[str]]:
    out = []
    for r, peer in _rows(results):
        out.append(_cells(r, peer, True, _paired_ratios(results, r.clients, r.rate, r.server)))
        base = _baseline(results, r)
        if base is not None:
            row = _cells(base, peer, True, _paired_ratios(results, r.clients, r.rate, BASELINE))
            out.append(["", "", *row[2:]])
        if peer is not None:
            out.append(_cells(peer, None, False))
    return out


def table_text(results: list[Result], args: argparse.Namespace) -> str:
    rows = [list(COLUMNS), *_all_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(targets_text(results))
    return "\n".join(lines)


def table_markdown(results: list[Result], args: argparse.Namespace) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(row) + " |" for row in _all_rows(results)]
    return "\n".join([head, sep, *body, "", targets_text(results), ""])


def targets_text(results: list[Result]) -> str:
    ours = [r for r in results if r.server == "paxyo"]
    if not ours:
        return ""
    lines = ["Targets for one gateway process (issues 4 and 13):"]
    big = [r for r in ours if r.clients >= 10_000]
    if big:
        kb = max(r.rss_per_conn_kb for r in big)
        met = kb <= 20 and all(r.connected >= 10_000 for r in big)
        lines.append(f"- 10k connections at <= 20 KB each: {kb:.1f} KB -> "
                     f"{'met' if met else 'NOT met'}")
    else:
        lines.append("- 10k connections: not measured in this run")
    hi = [r for r in ours if r.deliveries_per_s >= 12_000]
    if hi:
        ok = [r for r in hi if r.deliveries_per_cpu_s >= 12_500 and r.p99_ms < 200 and r.lost == 0]
        best = max(hi, key=lambda r: r.deliveries_per_cpu_s)
        lines.append(f"- >= 12,500 deliveries/s per core at p99 < 200 ms: "
                     f"{'met' if ok else 'NOT met'} (best: C={best.clients} "
                     f"{best.deliveries_per_cpu_s:.0f} deliv/CPU-s, p99 {best.p99_ms:.1f} ms)")
    elif not any(r.rate >= 12_500 for r in ours):
        lines.append("- >= 12,500 deliveries/s per core: not measured (no rate >= 12,500 ev/s)")
    else:
        best = max(ours, key=lambda r: r.deliveries_per_s)
        lines.append(f"- >= 12,500 deliveries/s per core at p99 < 200 ms: NOT met (no run kept up "
                     f"with >= 12,000 deliveries/s; best {best.deliveries_per_s:.0f}/s at "
                     f"C={best.clients}, {best.deliveries_per_cpu_s:.0f} deliv/CPU-s)")
    top = sorted((r for r in ours if r.clients >= 10_000 and r.rate >= 12_500),
                 key=lambda r: r.rep)
    if top:
        runs = ", ".join(f"{r.p99_ms:.1f} ms (server waited "
                         f"{r.server_wait_s / r.seconds * 1000:.0f} ms/s for a CPU, "
                         f"load {r.load_start:.1f})" for r in top)
        met = all(r.p99_ms < 50 and r.lost == 0 for r in top)
        lines.append(f"- p99 < 50 ms at 10,000 clients and 12,500 ev/s: "
                     f"{'met' if met else 'NOT met'} in {len(top)} run(s): {runs}")
    ratios = []
    unequal = []
    for r, peer in _rows(results):
        if r.server == "paxyo" and peer is not None and peer.deliveries_per_cpu_s:
            ratios.append((r.deliveries_per_cpu_s / peer.deliveries_per_cpu_s, r))
            if not _equal_load(r, peer):
                unequal.append(f"C={r.clients}/{r.rate} ev/s")
    if ratios:
        worst = min(ratios, key=lambda x: x[0])
        best = max(ratios, key=lambda x: x[0])
        repeats = max(r.rep for r in results) + 1
        lines.append(f"- >= 2x Socket.IO's deliveries per CPU-second: "
                     f"{'met in every case' if worst[0] >= 2 else 'NOT met'} "
                     + (f"(medians of {repeats} runs each) " if repeats > 1 else "")
                     + f"(range {worst[0]:.2f}x at C={worst[1].clients}/{worst[1].rate} ev/s .. "
                     f"{best[0]:.2f}x at C={best[1].clients}/{best[1].rate} ev/s)")
        if unequal:
            lines.append(f"  {UNEQUAL} not at equal load (a server lost deliveries, i.e. did not "
                         f"keep up): {', '.join(unequal)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _pairs(text: str) -> set[tuple[int, int]]:
    out = set()
    for item in text.split(","):
        c, _, r = item.partition(":")
        out.add((int(c), int(r)))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_client", "_publish"):
        return _internal(argv)
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=_ints, default=[1000, 5000, 10000],
                   help="connection counts, comma-separated (default 1000,5000,10000)")
    p.add_argument("--rates", type=_ints, default=[1000, 5000, 12500],
                   help="events per second, comma-separated (default 1000,5000,12500)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds published before measuring")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each case N times, servers alternating first; report medians")
    p.add_argument("--sockets-per-user", type=int, default=1,
                   help="sockets per user (each event is delivered to all of its user's sockets)")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--connect-concurrency", type=int, default=32,
                   help="connection attempts in flight per load-generator process")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between connecting and the RSS sample")
    p.add_argument("--only", choices=("paxyo", "socketio"), help="run one server only")
    p.add_argument("--quick", action="store_true",
                   help="about a minute: 2000 clients, 1000 and 5000 ev/s, 5 s measured")
    p.add_argument("--redis-url", help="use this Redis (default: a private redis-server)")
    p.add_argument("--baseline", metavar="REV",
                   help="also run the gateway of this git revision (e.g. a commit before a "
                        "change), same load, shown as 'baseline' beside ours")
    p.add_argument("--gateway-cmd", help="command that runs the gateway (default: "
                   "python -m paxyo.cli gateway); gets PORT and the settings in its env")
    p.add_argument("--profile", type=_pairs, default=set(),
                   help="C:RATE[,C:RATE]: py-spy the gateway during these runs")
    p.add_argument("--profile-dir", default=".", help="where py-spy writes (raw folded stacks)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp folder with logs")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rates, args.duration, args.warmup = [2000], [1000, 5000], 5.0, 2.0
    args.servers = [args.only] if args.only else ["paxyo", "socketio"]
    if args.baseline:
        args.servers.insert(1, BASELINE)
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        if args.keep_logs:
            print(f"logs kept in {bench.tmp}")
    return 0


def _internal(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    if argv[0] == "_client":
        p.add_argument("--kind", choices=("paxyo", "socketio"), required=True)
        p.add_argument("--base", required=True)
        p.add_argument("--sockets", type=int, required=True)
        p.add_argument("--sockets-per-user", type=int, default=1)
        p.add_argument("--first-user", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=100)
        p.add_argument("--connect-timeout", type=float, default=120.0)
        args = p.parse_args(argv)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            import uvloop
        except ImportError:
            asyncio.run(client_main(args))
        else:
            uvloop.run(client_main(args))
        return 0
    for name, kind in (("--redis-url", str), ("--prefix", str), ("--rate", float),
                       ("--seconds", float), ("--users", int), ("--first-user", int),
                       ("--first-id", int), ("--start-at", float), ("--win-start", int),
                       ("--win-end", int), ("--seed", int)):
        p.add_argument(name, type=kind, required=True)
    publish_main(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
