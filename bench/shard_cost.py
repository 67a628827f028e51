"""Where a checked order's CPU goes, stage by stage, in one process (no RQ, no other workers).

    python bench/shard_cost.py [--orders 20000] [--database-url URL] [--redis-url URL]
                               [--profile]

Seeds N open orders (10% of which the simulator reports Canceled or Partial, as in
bench/pipeline.py), then plans every shard as the dispatcher does and runs them through
``workers.jobs.run_shards``, ``PAXYO_SHARDS_PER_JOB`` shards at a time, as a worker does, in
this process. The simulator runs in its own process, so its CPU is not counted. Prints CPU
seconds per 1,000 orders for each stage (measured with a process-time profiler, so waiting on
the provider, the database server or Redis costs nothing) and in all. The profiler itself
about doubles the CPU of code with many small calls, so the shares are what to read here, and
bench/pipeline.py's figure (whole processes, RQ included, no profiler) is the real cost.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from pipeline import (  # noqa: E402
    KEY,
    _answers_http,
    bench_redis,
    free_port,
    fresh_database,
    seed_database,
    seed_simulators,
    wait_for,
)
from sqlalchemy import update  # noqa: E402

from dispatcher.planner import plan_shards  # noqa: E402
from monitoring.metrics import process_metrics  # noqa: E402
from paxyo.clock import utcnow  # noqa: E402
from paxyo.settings import Settings  # noqa: E402
from paxyo.store.schema import orders  # noqa: E402
from workers.context import build_context  # noqa: E402
from workers.jobs import run_shards  # noqa: E402

# (stage, file, the functions whose inclusive CPU time is the stage's)
STAGES = (
    ("plan shards (dispatcher)", "planner.py", "plan_shards"),
    ("claim leases", "leases.py", "claim claim_all"),  # per shard before, per job now
    ("breaker + rate limit", "jobs.py", "_held_back"),
    ("provider call + parse", "client.py", "status_many"),
    ("apply: read, decide, write (one transaction)", "observations.py", "apply_observations"),
    ("publish to Redis", "jobs.py", "_publish"),
    ("metrics", "metrics.py", "count_applied"),
    ("log lines", "jobs.py", "_log_changes"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--profile", action="store_true", help="also print the top functions")
    parser.add_argument("--no-profiler", action="store_true",
                        help="only the total CPU, measured without the profiler's overhead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> None:
    with bench_redis(args.redis_url) as redis_url:
        run_with(args, workdir, redis_url)


def run_with(args: argparse.Namespace, workdir: Path, redis_url: str) -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "paxyo.cli", "simulator", "--port", str(port),
                            "--key", KEY, "--seed", "1"], cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for("the simulator", lambda: _answers_http(f"{base}/sim/stats"), 20)
        database_url = fresh_database(args.database_url, workdir)
        seed_database(database_url, args.orders)
        seed_simulators({"alpha": base, "beta": base}, args.orders)
        settings = Settings.from_env({
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "PAXYO_REDIS_PREFIX": f"bench-shard-{port}", "PAXYO_QUEUE": f"bench-shard-{port}",
            "PAXYO_PROVIDER_ALPHA_URL": f"{base}/api/v2", "PAXYO_PROVIDER_ALPHA_KEY": KEY,
            "PAXYO_PROVIDER_BETA_URL": f"{base}/api/v2", "PAXYO_PROVIDER_BETA_KEY": KEY,
            "PAXYO_PROVIDER_RATE_LIMIT": "1000000",
            # an order checked once is not due again during the run (a shorter interval had
            # the planner pick the orders checked first again, most overdue first)
            "PAXYO_POLL_INTERVAL": "120",
        })
        measure(settings, args.orders, args.profile, not args.no_profiler)
    finally:
        sim.terminate()
        sim.wait()


def measure(settings: Settings, count: int, show_profile: bool, profiled: bool) -> None:
    ctx = build_context(settings, process_metrics())
    profiler = cProfile.Profile(time.process_time)
    checked = changed = 0
    with ctx.engine.begin() as conn:  # everything due now; once checked, not again for 118 s
        conn.execute(update(orders).values(next_check_at=utcnow() - timedelta(seconds=1)))
    started_cpu, started = time.process_time(), time.monotonic()
    try:
        while checked < count:
            if profiled:
                profiler.enable()
            shards = plan_shards(ctx.engine, now=utcnow(), poll_interval=settings.poll_interval,
                                 lease_seconds=600, max_shards=50)
            per_job = settings.shards_per_job  # grouped into jobs as the dispatcher does
            for job in (shards[i:i + per_job] for i in range(0, len(shards), per_job)):
                for result in run_shards(ctx, [(s.provider, tuple(s.order_ids), s.token)
                                               for s in job]):
                    checked += result["checked"]
                    changed += result.get("changed", 0)
            if profiled:
                profiler.disable()
            if not shards:
                break
    finally:
        ctx.close()
    cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
    per_k = 1000 / max(checked, 1)
    db = settings.database_url.split(":", 1)[0]
    print(f"\n{checked} orders checked, {changed} changed, {db}; "
          f"CPU {cpu:.2f} s in {wall:.1f} s wall: {cpu * per_k:.3f} CPU s per 1,000 orders"
          f"{'' if profiled else ' (no profiler)'}\n")
    if not profiled:
        return
    stats = pstats.Stats(profiler)
    print("| stage | CPU s per 1,000 orders | share |\n|---|---|---|")
    counted = 0.0
    for label, filename, function in STAGES:
        spent = sum(row[3] for key, row in stats.stats.items()  # type: ignore[attr-defined]
                    if key[0].endswith(filename) and key[2] in function.split())
        counted += spent
        print(f"| {label} | {spent * per_k:.3f} | {spent / cpu:.0%} |")
    rest = cpu - counted
    print(f"| the rest (run_shards' own, result dicts, profiler) | {rest * per_k:.3f} | "
          f"{rest / cpu:.0%} |")
    if show_profile:
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(r"/(paxyo|workers|providers|dispatcher)/", 45)


if __name__ == "__main__":
    main()
