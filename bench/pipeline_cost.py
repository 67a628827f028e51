#!/usr/bin/env python3
"""User-space instructions per checked order in the status pipeline, this tree against a baseline.

CPU-time figures of bench/pipeline.py and bench/shard_cost.py move from run to run on a shared
machine by more than most single changes to the pipeline do. This benchmark counts instructions
instead (valgrind's callgrind), which repeat closely for the same code and input, as
bench/hub_cost.py does for the gateway. One process does what a worker and the dispatcher's
planning do for every order: ``dispatcher.planner.plan_shards`` leases the due orders in shards
of 100, ``workers.jobs.run_shards`` checks them (claim, provider call over real HTTP, parse,
apply in one transaction, publish to Redis, release), a few shards per job as a worker does.
The database is a fresh SQLite file (its work is in the process, so it is counted); the
``paxyo simulator`` and Redis run in their own processes and are not counted, nor is kernel
time.

    bench/pipeline_cost.py                          # this tree against HEAD (a few minutes)
    bench/pipeline_cost.py --baseline 1ad6c22 --orders 800 --change-rates 10 --repeat 2

The baseline is checked out into a temporary ``git worktree``; both trees run the same child
(this file) with their own packages first on ``PYTHONPATH``, on databases seeded by their own
``bench/pipeline.py``. Seeding is done outside the counted process. Each tree runs with N and
3N open orders; the difference divided by the extra orders checked is the cost per order, with
interpreter start-up, imports and set-up excluded. With change rates 0 and 10 (the default),
the 0% run gives the cost of an unchanged order and the 10% run (half Canceled, half Partial,
as in bench/pipeline.py) that of a changed one. Prints a table; asserts nothing. Needs valgrind
on PATH and the project installed (run with the project's virtualenv Python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--orders", type=int, default=400,
                   help="N: each tree runs with N and 3N open orders (400; a multiple of "
                        "100 x 2 providers x shards per job keeps every job full)")
    p.add_argument("--change-rates", default="0,10",
                   help="comma-separated percentages of orders the provider reports changed")
    p.add_argument("--shards-per-job", type=int, default=4,
                   help="shards whose provider calls one job has in flight (PAXYO_SHARDS_PER_JOB)")
    p.add_argument("--repeat", type=int, default=1, help="measure everything this many times")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--seed", nargs=2, metavar=("DIR", "COUNT"), help=argparse.SUPPRESS)
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.seed:
        seed(Path(args.seed[0]), int(args.seed[1]))
    elif args.child:
        check_orders(json.loads(args.child))
    else:
        compare(args)


# -- the parent: trees, simulator, runs, table ----------------------------------------------


def compare(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("pipeline_cost: valgrind is not on PATH (Debian: apt-get install valgrind)")
    sys.path.insert(0, str(REPO / "bench"))
    from pipeline import bench_redis

    rates = [int(r) for r in args.change_rates.split(",")]
    with bench_redis(args.redis_url) as args.redis_url:
        runs, seconds = _compare_trees(args, rates)
    print_report(args, rates, runs, seconds)


def _compare_trees(args: argparse.Namespace,
                   rates: list[int]) -> tuple[list[dict[tuple[str, int], dict[str, float]]], float]:
    from pipeline import KEY, _answers_http, free_port, wait_for

    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "simulator", "--port", str(port),
                            "--key", KEY, "--seed", "1"], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    args.sim = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_for("the simulator", lambda: _answers_http(f"{args.sim}/sim/stats"), 20)
        with tempfile.TemporaryDirectory(prefix="paxyo-pipeline-cost-") as tmp:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                            str(base), args.baseline], check=True)
            args.baseline_rev = _revision(base)
            try:
                trees = {"baseline": base, "this tree": REPO}
                runs = [{(name, rate): per_order(tree, rate, args, Path(tmp))
                         for rate in rates for name, tree in trees.items()}
                        for _ in range(args.repeat)]
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(base)], check=False)
    finally:
        sim.terminate()
        sim.wait()
    return runs, time.monotonic() - started


def per_order(tree: Path, rate: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Instructions, orders checked and orders changed: the 3N run minus the N run."""
    counts = []
    for count in (args.orders, 3 * args.orders):
        print(f"callgrind: {tree} ({_revision(tree)}), {count} orders, {rate}% changing ...",
              end=" ", flush=True)
        t0 = time.monotonic()
        counts.append(run_child(tree, count, rate, args, tmp))
        print(f"{counts[-1]['instructions'] / 1e9:.2f} G instructions, "
              f"{counts[-1]['checked']} checked, {counts[-1]['changed']} changed "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    return {k: counts[1][k] - counts[0][k] for k in ("instructions", "checked", "changed")}


def run_child(tree: Path, count: int, rate: int, args: argparse.Namespace,
              tmp: Path) -> dict[str, int]:
    """Seed a fresh database and the simulator, then count one child process under callgrind."""
    from pipeline import KEY, _drop_redis_keys

    workdir = Path(tempfile.mkdtemp(prefix=f"{tree.name}-{count}-{rate}-", dir=tmp))
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}
    database_url = subprocess.run(
        [sys.executable, __file__, "--seed", str(workdir), str(count)], check=True, cwd=tree,
        env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    seed_statuses(args.sim, count, rate)
    prefix = f"bench-pcost-{uuid.uuid4().hex[:8]}"
    params = {"tree": str(tree), "count": count, "per_job": args.shards_per_job,
              "result": str(workdir / "result.json"), "env": {
                  "DATABASE_URL": database_url, "REDIS_URL": args.redis_url,
                  "PAXYO_REDIS_PREFIX": prefix, "PAXYO_QUEUE": f"{prefix}-q",
                  "PAXYO_PROVIDER_ALPHA_URL": f"{args.sim}/api/v2",
                  "PAXYO_PROVIDER_ALPHA_KEY": KEY,
                  "PAXYO_PROVIDER_BETA_URL": f"{args.sim}/api/v2",
                  "PAXYO_PROVIDER_BETA_KEY": KEY,
                  "PAXYO_PROVIDER_RATE_LIMIT": "1000000"}}
    out = workdir / "callgrind.out"
    log = workdir / "child.log"
    try:
        with open(log, "wb") as sink:
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 sys.executable, __file__, "--child", json.dumps(params)],
                stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tree)
        if done.returncode != 0:
            sys.exit(f"pipeline_cost: the child failed in {tree}:\n{log.read_text()[-3000:]}")
    finally:
        _drop_redis_keys(args.redis_url, prefix)
    result = json.loads((workdir / "result.json").read_text())
    for module, path in result["modules"].items():
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            sys.exit(f"pipeline_cost: the child in {tree} imported {module} from {path}")
    if result["checked"] != count:
        sys.exit(f"pipeline_cost: {result['checked']} of {count} orders checked in {tree}")
    return {"instructions": _total_instructions(out), "checked": result["checked"],
            "changed": result["changed"]}


def seed_statuses(sim: str, count: int, rate: int) -> None:
    """What the provider reports for orders 1..count: ``rate``% ended (half Canceled, half
    Partial, chosen as bench/pipeline.py's final_state chooses its 10%), the rest In progress.
    Both providers are the one simulator."""
    from pipeline import post_json

    orders = []
    for oid in range(1, count + 1):
        bucket = (oid * 7919) % 1000
        if bucket < rate * 5:
            status, remains = "Canceled", 1000
        elif bucket < rate * 10:
            status, remains = "Partial", 1 + oid % 999
        else:
            status, remains = "In progress", 1000
        orders.append({"id": str(oid), "status": status, "remains": remains})
    post_json(f"{sim}/sim/orders", {"orders": orders})


def _total_instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _revision(tree: Path) -> str:
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                            "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return rev + (" + uncommitted changes" if dirty else "")


def print_report(args: argparse.Namespace, rates: list[int],
                 runs: list[dict[tuple[str, int], dict[str, float]]], seconds: float) -> None:
    names = ("baseline", "this tree")
    rows: list[tuple[str, list[dict[str, float]]]] = []  # (label, per run: name -> figure)
    for rate in rates:
        rows.append((f"per checked order, {rate}% changing",
                     [{n: r[n, rate]["instructions"] / r[n, rate]["checked"] for n in names}
                      for r in runs]))
    if 0 in rates:
        for rate in (r for r in rates if r > 0):
            rows.append((f"per changed order (from the 0% and {rate}% runs)",
                         [{n: _per_changed(r[n, 0], r[n, rate]) for n in names} for r in runs]))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{platform.node()}, {_cpu_model()}, {os.cpu_count()} CPUs, load average {load}, "
          f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; Python {platform.python_version()}, "
          f"{_valgrind_version()}; {seconds / 60:.1f} min in all.")
    print("The machine is shared with other sessions; instruction counts do not depend on its "
          "load or clock speed.")
    print(f"baseline: {args.baseline} ({args.baseline_rev}); this tree: {REPO} "
          f"({_revision(REPO)})")
    print(f"\nstatus pipeline, user-space instructions per order in one process "
          f"(dispatcher.planner.plan_shards + workers.jobs.run_shards, {args.shards_per_job} "
          f"shards per job; SQLite in the process; simulator and Redis not counted): "
          f"{3 * args.orders} orders minus {args.orders}"
          + (f", {args.repeat} runs each (median; range)" if args.repeat > 1 else "") + "\n")
    print(f"| instructions | baseline ({args.baseline}) | this tree | this / baseline |")
    print("|---|---:|---:|---:|")
    for label, per_run in rows:
        cells = [_cell([run[n] for run in per_run]) for n in names]
        ratios = [run["this tree"] / run["baseline"] for run in per_run]
        ratio = f"{statistics.median(ratios):.3f}"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.3f}..{max(ratios):.3f})"
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    top = max(rates)
    per_k = [{n: run[n] / 1000 for n in names} for run in rows[rates.index(top)][1]]
    print(f"| M instructions per 1,000 orders, {top}% changing | "
          + " | ".join(_cell([run[n] for run in per_k], ".1f") for n in names) + " | |")


def _per_changed(unchanged_run: dict[str, float], run: dict[str, float]) -> float:
    """A changed order's instructions, taking the others to cost what the 0% run's orders did."""
    per_unchanged = unchanged_run["instructions"] / unchanged_run["checked"]
    rest = run["instructions"] - per_unchanged * (run["checked"] - run["changed"])
    return rest / run["changed"] if run["changed"] else float("nan")


def _cell(values: list[float], fmt: str = ",.0f") -> str:
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" ({min(values):{fmt}}..{max(values):{fmt}})"
    return text


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()


# -- the seeder: a fresh database by the tree's own bench/pipeline.py (not counted) ------------


def seed(workdir: Path, count: int) -> None:
    """Run with the tree as working directory: its bench/pipeline.py puts the tree first on
    sys.path, so the tree's own migrations and schema make the database."""
    sys.path.insert(0, str(Path.cwd() / "bench"))
    from pipeline import fresh_database, seed_database

    url = fresh_database(None, workdir)
    seed_database(url, count)
    print(url)


# -- the child: the counted process --------------------------------------------------------


def check_orders(params: dict) -> None:
    """Plan and check every open order, as the dispatcher and a worker do, in this process.

    Only interfaces that baselines share: plan_shards, build_context, run_shard(s),
    Settings.from_env, process_metrics and utcnow."""
    sys.path.insert(0, params["tree"])
    import dispatcher
    import monitoring
    import paxyo
    import providers
    import workers
    from dispatcher.planner import plan_shards
    from monitoring.metrics import process_metrics
    from paxyo.clock import utcnow
    from paxyo.settings import Settings
    from workers import jobs
    from workers.context import build_context

    settings = Settings.from_env(params["env"])
    ctx = build_context(settings, process_metrics())
    count, per_job = params["count"], params["per_job"]
    far = utcnow().replace(year=utcnow().year + 1)  # every order is due
    checked = changed = 0
    try:
        while checked < count:
            shards = plan_shards(ctx.engine, now=far, poll_interval=settings.poll_interval,
                                 lease_seconds=600, max_shards=50)
            if not shards:
                break
            for i in range(0, len(shards), per_job):
                group = [(s.provider, tuple(s.order_ids), s.token) for s in shards[i:i + per_job]]
                if per_job == 1:
                    results = [jobs.run_shard(ctx, *group[0])]
                else:
                    results = jobs.run_shards(ctx, group)
                checked += sum(r["checked"] for r in results)
                changed += sum(r.get("changed", 0) for r in results)
    finally:
        ctx.close()
    Path(params["result"]).write_text(json.dumps({
        "checked": checked, "changed": changed,
        "modules": {m.__name__: m.__file__
                    for m in (paxyo, workers, dispatcher, providers, monitoring)}}))


if __name__ == "__main__":
    main()
