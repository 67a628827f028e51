"""Fuzz a real gateway: N generated requests for every /v1 route and /ws, then the invariants.

    python bench/fuzz.py [--database sqlite|postgresql|mysql] [--requests 10000] [--seed S]
                         [--redis-url URL]

Starts ``paxyo gateway`` as a process of its own on a fresh database (a temp SQLite file, or
a new database on the local PostgreSQL / MariaDB, dropped afterwards) and sends it requests
drawn from the strategies in ``tests/fuzz_http.py`` (Hypothesis drives the loop; nothing is
shrunk or stored). Prints counts by status code, the number of 5xx, of other contract
breaches (error bodies, loose acceptance), the tracebacks in the gateway's log, and whether
every balance equals the sum of its ledger entries. Exits non-zero if any of those is wrong.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from paxyo.cli.private_redis import PrivateRedis, answers  # noqa: E402
from paxyo.ledger import ledger_mismatches  # noqa: E402
from paxyo.store.engine import open_engine  # noqa: E402
from paxyo.store.migrate import upgrade  # noqa: E402
from tests.fuzz_http import (  # noqa: E402
    ADMIN_TOKEN,
    JWT_SECRET,
    USERS,
    Client,
    check_reply,
    http_requests,
    ws_requests,
)
from wsgateway.auth import mint_token  # noqa: E402

SERVERS = {"postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
           "mysql": "mysql+pymysql://root@127.0.0.1:3306/test"}
BATCH = 10  # requests per Hypothesis example


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Database:
    """A fresh, migrated database; dropped on close."""

    def __init__(self, kind: str, folder: str) -> None:
        self.kind, self.admin, self.name = kind, None, f"paxyo_fuzz_{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            self.url = f"sqlite:///{folder}/fuzz.db"
        else:
            self.admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {self.name}")
            self.url = SERVERS[kind].rsplit("/", 1)[0] + f"/{self.name}"
        upgrade(self.url)

    def close(self) -> None:
        if self.admin is not None:
            force = " WITH (FORCE)" if self.kind == "postgresql" else ""
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name}{force}")
            self.admin.dispose()


def start_gateway(database_url: str, redis_url: str, port: int, log_path: Path
                  ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "PAXYO_REDIS_PREFIX": f"paxyofuzz:{uuid.uuid4().hex[:8]}", "PORT": str(port),
           "PAXYO_PROVIDER_SIM_URL": "http://127.0.0.1:9/api/v2", "PAXYO_PROVIDER_SIM_KEY": "k",
           "PAXYO_JWT_SECRET": JWT_SECRET, "PAXYO_ADMIN_TOKEN": ADMIN_TOKEN}
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "gateway"], env=env,
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gateway exited: {log_path.read_text()[-2000:]}")
        try:
            client = Client("127.0.0.1", port, timeout=2)
            from tests.fuzz_http import Request

            if client.send(Request("GET", "/healthz")).status == 200:
                client.close()
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("gateway did not answer /healthz within 30 s")


def run(requests: int, port: int, seed_value: int) -> tuple[Counter[int], list[str], float]:
    client = Client("127.0.0.1", port)
    tokens = {user: mint_token(JWT_SECRET, user) for user in USERS}
    statuses: Counter[int] = Counter()
    breaches: list[str] = []
    sent = 0

    @seed(seed_value)
    @settings(max_examples=(requests + BATCH - 1) // BATCH, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(http_requests(), http_requests(), ws_requests(tokens)),
                    min_size=BATCH, max_size=BATCH))
    def exchange(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal sent
        for request in batch:
            if sent >= requests:
                return
            sent += 1
            try:
                reply = client.send(request)
            except OSError as exc:
                breaches.append(f"{request.method} {request.path[:80]}: {exc}")
                client.close()
                continue
            statuses[reply.status] += 1
            problem = check_reply(request, reply)
            if problem is not None:
                shown = {k: v for k, v in request.headers.items() if k != "Content-Type"}
                breaches.append(f"{request.method} {request.path[:80]} {shown!r:.120}: "
                                f"{problem}")

    started = time.monotonic()
    exchange()
    client.close()
    return statuses, breaches, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "mysql"],
                        default="sqlite")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="paxyo-fuzz-") as folder:
        private = None
        redis_url = args.redis_url
        if not answers(redis_url):
            private = PrivateRedis(free_port())
            redis_url = private.start()
        database = Database(args.database, folder)
        log_path = Path(folder) / "gateway.log"
        port = free_port()
        gateway = start_gateway(database.url, redis_url, port, log_path)
        try:
            statuses, breaches, seconds = run(args.requests, port, args.seed)
        finally:
            gateway.terminate()
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        engine = open_engine(database.url)
        try:
            with engine.connect() as conn:
                mismatches = ledger_mismatches(conn)
                accounts = conn.exec_driver_sql("SELECT COUNT(*) FROM accounts").scalar_one()
                entries = conn.exec_driver_sql("SELECT COUNT(*) FROM ledger_entries").scalar_one()
                placed = conn.exec_driver_sql("SELECT COUNT(*) FROM orders").scalar_one()
        finally:
            engine.dispose()
            database.close()
            if private is not None:
                private.stop()
        log_text = log_path.read_text(errors="replace")

    total = sum(statuses.values())
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    tracebacks = log_text.count("Traceback (most recent call last)")
    print(f"fuzz: {args.database}, seed {args.seed}: {total} requests in {seconds:.1f} s "
          f"({total / seconds:.0f}/s)")
    print("status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())))
    print(f"5xx: {server_errors}")
    print(f"other contract breaches: {len(breaches)}")
    for line in breaches[:20]:
        print(f"  {line}")
    print(f"tracebacks in the gateway log: {tracebacks}")
    print(f"accounts {accounts}, orders {placed}, ledger entries {entries}; "
          f"balances equal ledgers: {'yes' if not mismatches else f'NO {mismatches[:5]}'}")
    ok = server_errors == 0 and not breaches and not tracebacks and not mismatches
    return 0 if ok and total == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
