"""When an open order is next checked.

PAXYO_POLL_INTERVAL is the ceiling for how stale an open order may get. An order falls due a
little before it (:func:`dispatch_allowance`), so that it is asked about within the interval
and not one dispatcher tick and a queue after it. Below it, orders that were just placed or
just changed are checked sooner (things move early in an order's life), and the interval grows
back to the ceiling the longer an order stays unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta


def min_interval(poll_interval: float) -> float:
    return max(1.0, poll_interval / 4)


def first_check_delay(poll_interval: float) -> float:
    """A newly placed order is first checked after the shortest interval."""
    return min_interval(poll_interval)


def dispatch_allowance(poll_interval: float) -> float:
    """Seconds from an order falling due to its status call: the dispatcher's 1 s tick, the
    queue and the call itself (a tenth of the interval, at most 2 s)."""
    return min(2.0, poll_interval / 10)


def next_check_delay(poll_interval: float, unchanged_for: float) -> float:
    """Half the time an order has been unchanged, between the floor and the poll interval
    less the dispatch allowance."""
    ceiling = poll_interval - dispatch_allowance(poll_interval)
    return min(ceiling, max(min_interval(poll_interval), unchanged_for / 2))


def next_check_at(now: datetime, changed_at: datetime, poll_interval: float) -> datetime:
    unchanged_for = max(0.0, (now - changed_at).total_seconds())
    return now + timedelta(seconds=next_check_delay(poll_interval, unchanged_for))


def next_checks(now: datetime, poll_interval: float) -> Callable[[datetime], datetime]:
    """:func:`next_check_at` for many orders checked at ``now``: by their ``changed_at``.

    Orders unchanged for twice the ceiling or longer (most open orders) all get the same
    time, without the arithmetic; the :func:`paxyo.observations` rescheduling then writes
    them with one statement.
    """
    ceiling = poll_interval - dispatch_allowance(poll_interval)
    settled_before = now - timedelta(seconds=2 * ceiling)
    at_ceiling = now + timedelta(seconds=ceiling)

    def next_at(changed_at: datetime) -> datetime:
        if changed_at <= settled_before:
            return at_ceiling
        return next_check_at(now, changed_at, poll_interval)

    return next_at
