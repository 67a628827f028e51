"""The circuit breaker and rate limiter shared through Redis, on a fake clock."""

import pytest
import redis

from paxyo.keys import Keys
from paxyo.protection import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def breaker(redis_url, prefix, clock):
    return CircuitBreaker(redis.Redis.from_url(redis_url), Keys(prefix), threshold=5,
                          cooldown=15, max_cooldown=300, clock=clock)


def cooldown_left(b: CircuitBreaker) -> float:
    allowed, wait = b.allow("sim")
    assert not allowed
    return wait


def test_opens_at_the_threshold_and_failures_in_flight_do_not_lengthen_it(
        redis_url, redis_prefix):
    clock = Clock()
    b = breaker(redis_url, redis_prefix, clock)
    for _ in range(4):
        b.record_failure("sim")
    assert b.state("sim") is CircuitState.CLOSED and b.allow("sim") == (True, 0.0)
    b.record_failure("sim")
    assert b.state("sim") is CircuitState.OPEN
    assert cooldown_left(b) == 15
    for _ in range(20):  # shards that were already calling the provider fail one by one
        clock.now += 0.1
        b.record_failure("sim")
    assert cooldown_left(b) == pytest.approx(13, abs=0.01)


def test_each_failed_probe_doubles_the_cooldown_up_to_the_cap_and_a_success_closes(
        redis_url, redis_prefix, caplog):
    caplog.set_level("INFO", "paxyo.providers")
    clock = Clock()
    b = breaker(redis_url, redis_prefix, clock)
    for _ in range(5):
        b.record_failure("sim")
    for expected in (30, 60, 120, 240, 300, 300):
        clock.now += 1000
        assert b.state("sim") is CircuitState.HALF_OPEN
        assert b.allow("sim") == (True, 0.0)      # one worker probes
        assert b.allow("sim")[0] is False         # the others wait
        b.record_failure("sim")
        assert cooldown_left(b) == expected
    clock.now += 1000
    assert b.allow("sim") == (True, 0.0)
    b.record_success("sim")
    assert b.state("sim") is CircuitState.CLOSED
    b.record_success("sim")  # already closed: said once only
    assert [r.getMessage() for r in caplog.records if "closed" in r.getMessage()] == [
        "circuit sim closed: provider answers again"]
    assert not b.client.exists(b.keys.circuit("sim") + ":probe")
    for _ in range(5):
        b.record_failure("sim")
    assert cooldown_left(b) == 15  # a new outage starts from the base cool-down
