#!/usr/bin/env python3
"""User-space instructions per routed event in the gateway's hub, this tree against a baseline.

Wall-clock and CPU-time figures of bench/gateway.py move 10-20% from run to run on a shared
machine, more than most single changes to the routing code. This benchmark counts instructions
instead (valgrind's callgrind), which repeat exactly for the same code and input: one process
holds N live subscribers on real uvloop transports (AF_UNIX socket pairs), feeds XREAD replies in
the outbox relay's layout through hiredis and routes them with ``Hub.route``; uvloop then writes
every frame. Kernel time is not counted (the write syscalls cost the same in both trees).

    bench/hub_cost.py                         # this tree against HEAD
    bench/hub_cost.py --baseline HEAD~5 --users 5000

Each tree runs twice, routing the same batches once and three times; the difference divided by
twice the events is the cost per event, start-up and set-up excluded. Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 62  # events per XREAD at 12,500 events/s and a 5 ms batch wait


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--users", type=int, default=1000, help="live subscribers, one per user")
    p.add_argument("--batches", type=int, default=200, help=f"XREAD replies of {BATCH} events")
    p.add_argument("--child", nargs=2, metavar=("TREE", "ROUNDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sys.path.insert(0, args.child[0])
        # Two descriptors per subscriber (its socket pair): --users 10000 needs over 20,000.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 2 * args.users + 256
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY
                                                        else min(want, hard), hard))
        import uvloop  # the gateway's loop

        uvloop.run(route_batches(args.users, args.batches, int(args.child[1])))
        return
    if shutil.which("valgrind") is None:
        sys.exit("hub_cost: valgrind is not on PATH (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="paxyo-hub-cost-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                        args.baseline], check=True)
        try:
            rows = [(f"baseline ({args.baseline})", per_event(base, args, Path(tmp))),
                    ("this tree", per_event(REPO, args, Path(tmp)))]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           check=False)
    print(f"\nhub routing, {args.users} users, {args.batches} x {BATCH} events "
          "(user-space instructions per event: hiredis parse, Hub.route, uvloop's write)")
    for name, cost in rows:
        print(f"  {name:<28} {cost:>8,.0f}")
    print(f"  {'change':<28} {(rows[1][1] / rows[0][1] - 1) * 100:>+7.1f}%")


def per_event(tree: Path, args: argparse.Namespace, tmp: Path) -> float:
    totals = []
    for rounds in (1, 3):
        out = tmp / f"callgrind.{tree.name}.{rounds}"
        print(f"callgrind: {tree} x{rounds} ...", flush=True)
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--users", str(args.users), "--batches", str(args.batches),
             "--child", str(tree), str(rounds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}, cwd=tree)
        if done.returncode:  # e.g. too many open files: counting a failed run would mislead
            sys.exit(f"hub_cost: the run in {tree} failed:\n"
                     + done.stderr.decode(errors="replace")[-2000:])
        totals.append(_total_instructions(out))
    return (totals[1] - totals[0]) / (2 * args.batches * BATCH)


def _total_instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


async def route_batches(users: int, batches: int, rounds: int) -> None:
    import hiredis
    import orjson

    from monitoring import metrics as metrics_module
    from paxyo.keys import Keys
    from wsgateway.hub import Hub

    class Sink(asyncio.Protocol):
        pass

    class Socket:  # what the hub uses of an aiohttp WebSocketResponse
        closed = False

        def __init__(self, transport: asyncio.Transport) -> None:
            self._req = type("Request", (), {"transport": transport})()

    loop = asyncio.get_running_loop()
    if hasattr(metrics_module, "process_metrics"):  # trees since each process builds its own
        hub = Hub(None, Keys("bench"),  # type: ignore[arg-type]
                  metrics=metrics_module.process_metrics())
    else:  # older baselines: a module-level registry and default
        hub = Hub(None, Keys("bench"))  # type: ignore[arg-type]
    new_api = list(inspect.signature(Hub.subscribe).parameters)[1] == "user_id"
    peers = []  # kept open, unread: each gets about 6 KB per round
    for user in range(users):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(Sink, ours)
        peers.append(theirs)
        if new_api:  # trees since the hub owns the transport: subscribe(user_id, transport)
            subscriber = hub.subscribe(user, transport)
        else:
            subscriber = hub.subscribe(Socket(transport), user)  # type: ignore[arg-type]
        subscriber.go_live(set(), "0-0")
    rng = random.Random(1)
    now_ms = int(time.time() * 1000)
    replies = []
    for b in range(batches):
        entries = []
        for k in range(BATCH):
            n = b * BATCH + k + 1
            payload = orjson.dumps({"type": "order.updated", "id": str(n).zfill(16), "data": {
                "order_id": n, "status": "Partial", "remains": 300, "refund": "7.00",
                "balance": "93.00"}})
            entries.append([f"{now_ms}-{n}".encode(), [
                b"u", str(rng.randrange(users)).encode(), b"i", str(n).encode(),
                b"t", str(now_ms).encode(), b"d", payload]])
        replies.append(_resp([[b"events", entries]]))
    reader = hiredis.Reader()
    for _ in range(rounds):
        hub._seen.clear()  # the same ids again: routed, not dropped as repeats
        for reply in replies:
            reader.feed(reply)
            hub.route(reader.gets()[0][1])
            await asyncio.sleep(0)  # uvloop writes the queued frames


def _resp(value: list | bytes) -> bytes:
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_resp(v) for v in value)
    return b"$%d\r\n%s\r\n" % (len(value), value)


if __name__ == "__main__":
    main()
