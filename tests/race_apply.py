"""Run as a separate process by test_races: apply one provider answer to many orders.

Usage: python -m tests.race_apply DATABASE_URL START_AT_EPOCH THREADS
Every process and thread applies the same answers with the same observation time, so all
of them reach the locked decision at once; only one may credit each order.
"""

import sys
import threading
import time
from datetime import UTC, datetime

from paxyo.observations import apply_observations
from paxyo.store.engine import open_engine
from providers.replies import StatusEntry

ORDERS = range(1, 41)


def replies() -> dict[str, StatusEntry]:
    answers = {}
    for oid in ORDERS:
        if oid % 2:
            answers[str(9000 + oid)] = StatusEntry("Canceled", None, None, None)
        else:
            answers[str(9000 + oid)] = StatusEntry("Partial", 700, None, None)
    return answers


def main() -> None:
    url, start_at, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    engine = open_engine(url, pool_size=threads)
    observed_at = datetime.fromtimestamp(start_at, UTC).replace(tzinfo=None)
    answers = replies()
    credited = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            report = apply_observations(engine, "sim", list(ORDERS), answers,
                                        observed_at=observed_at, decimals=2, poll_interval=30)
        except BaseException as exc:  # reported below: a racing applier must not fail
            failures.append(exc)
            raise
        credited.extend(c.order_id for c in report.changes)

    time.sleep(max(0.0, start_at - time.time()))
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(" ".join(map(str, sorted(credited))))
    if failures:
        sys.exit(f"{len(failures)} appliers failed: {failures[0]!r}")


if __name__ == "__main__":
    main()
