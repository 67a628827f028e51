"""paxyo.schedule: new and just-changed orders are checked sooner, never later than the poll
interval less the dispatch allowance, never sooner than its quarter (at least 1 s)."""

from datetime import datetime, timedelta

import pytest

from paxyo.schedule import (
    first_check_delay,
    min_interval,
    next_check_at,
    next_check_delay,
    next_checks,
)

NOW = datetime(2026, 11, 30, 12, 0, 0)


@pytest.mark.parametrize(("poll", "floor"), [(30, 7.5), (120, 30.0), (4, 1.0), (1, 1.0)])
def test_the_floor_is_a_quarter_of_the_interval_and_at_least_one_second(poll, floor):
    assert min_interval(poll) == floor
    assert first_check_delay(poll) == floor


@pytest.mark.parametrize(("unchanged_for", "delay"),
                         [(0, 7.5), (10, 7.5), (15, 7.5), (20, 10.0), (55, 27.5), (59, 28.0),
                          (86_400, 28.0)])
def test_the_delay_is_half_the_unchanged_time_between_floor_and_ceiling(unchanged_for, delay):
    assert next_check_delay(30, unchanged_for) == delay


def test_next_check_at_counts_from_the_last_change():
    assert next_check_at(NOW, NOW - timedelta(seconds=40), 30) == NOW + timedelta(seconds=20)
    assert next_check_at(NOW, NOW, 30) == NOW + timedelta(seconds=7.5)
    assert next_check_at(NOW, NOW - timedelta(days=3), 30) == NOW + timedelta(seconds=28)


@pytest.mark.parametrize(("poll", "ceiling"), [(15, 13.5), (30, 28.0), (120, 118.0), (5, 4.5)])
def test_an_order_falls_due_early_enough_to_be_asked_within_the_interval(poll, ceiling):
    assert next_check_delay(poll, 10**6) == ceiling


def test_a_change_stamped_in_the_future_counts_as_just_changed():
    assert next_check_at(NOW, NOW + timedelta(seconds=90), 30) == NOW + timedelta(seconds=7.5)


@pytest.mark.parametrize("poll", [1, 4, 15, 30, 300])
def test_next_checks_for_many_orders_agrees_with_next_check_at(poll):
    next_at = next_checks(NOW, poll)
    for seconds in (0, 0.5, 1, 3, 7, 13.4, 13.5, 20, 26.9, 27, 28, 56, 57, 600, 599.6, 86_400):
        changed_at = NOW - timedelta(seconds=seconds)
        assert next_at(changed_at) == next_check_at(NOW, changed_at, poll), seconds
