"""``python -m tests.campaign --runs N [--seed S] [--database sqlite|postgresql|mysql|all]``

Run ``i`` uses seed ``S + i`` (S is drawn when not given) and, with ``--database all``, the
databases in turn. One line per run; at the end the totals per kind and
``campaign: N runs, V violations``; the exit status is 1 when V > 0.
``--seed S --runs 1 --database D`` replays one run (same plan, same fault schedule).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence

from tests.campaign.databases import KINDS
from tests.campaign.run import SETTLE_SECONDS, RunResult, run_once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="how many runs (default 1)")
    parser.add_argument("--seed", type=int, help="seed of the first run (default: random)")
    parser.add_argument("--database", choices=[*KINDS, "all"], default="sqlite",
                        help="the store of every run, or all three in turn (default sqlite)")
    parser.add_argument("--keep", action="store_true",
                        help="keep every run's folder (logs, SQLite file), not only failed ones")
    # Hidden: moves a balance off the ledger before the checks, to prove that they can fail.
    parser.add_argument("--inject-violation", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_line(result: RunResult) -> str:
    return (f"seed {result.seed} {result.database:<10} orders {result.orders:>2} "
            f"refunds {result.refunds:>2} faults {result.faults:>3} kills {result.kills} "
            f"restarts {result.restarts} backends {result.counts['db_backends_killed']} "
            f"violations {len(result.violations)} "
            f"{result.seconds:5.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2
    first = args.seed if args.seed is not None else random.randrange(10**6)
    kinds = list(KINDS) if args.database == "all" else [args.database]
    started = time.monotonic()
    totals: Counter[str] = Counter()
    violations = 0
    settles: list[float] = []
    for i in range(args.runs):
        result = run_once(first + i, kinds[i % len(kinds)],
                          inject_violation=args.inject_violation, keep=args.keep)
        print(run_line(result), flush=True)
        for problem in result.violations:
            print(f"  VIOLATION seed {result.seed} {result.database}: {problem}", flush=True)
        if result.violations:
            print(f"  replay: python -m tests.campaign --seed {result.seed} --runs 1 "
                  f"--database {result.database}  (logs: {result.kept_dir})", flush=True)
        violations += len(result.violations)
        if result.settle_seconds is not None:
            settles.append(result.settle_seconds)
        totals.update(result.counts)
        totals.update({"runs": 1, f"runs_{result.database}": 1, "orders": result.orders,
                       "refunds": result.refunds, "kills": result.kills,
                       "restarts": result.restarts, "violations": len(result.violations)})
    print(summary(totals, time.monotonic() - started, settles), flush=True)
    print(f"campaign: {args.runs} runs, {violations} violations", flush=True)
    return 1 if violations else 0


def summary(totals: Counter[str], seconds: float, settles: list[float]) -> str:
    lines = [f"totals ({seconds / 60:.1f} min):"]
    if settles:
        mean = sum(settles) / len(settles)
        lines.append(f"  settled after the faults stopped: mean {mean:.1f} s, "
                     f"max {max(settles):.1f} s (bound {SETTLE_SECONDS:.0f} s)")
    main_kinds = ["runs", *(f"runs_{k}" for k in KINDS), "orders", "refunds", "kills",
                  "restarts", "violations"]
    lines.append("  " + ", ".join(f"{k} {totals[k]}" for k in main_kinds if k in totals))
    faults = sorted((k.removeprefix("fault:"), n) for k, n in totals.items()
                    if k.startswith("fault:"))
    lines.append("  faults: " + ", ".join(f"{k} {n}" for k, n in faults))
    rest = sorted((k, n) for k, n in totals.items()
                  if not k.startswith("fault:") and k not in main_kinds)
    lines.append("  other: " + ", ".join(f"{k} {n}" for k, n in rest))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
