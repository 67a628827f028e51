"""dispatcher.leader.LeaderLock on the real Redis: one leader, takeover after expiry, fence.

Short expiries; waits are on the condition (bounded), never fixed sleeps."""

import time

import pytest
import redis

from dispatcher.leader import LeaderLock
from paxyo.keys import Keys

TTL = 0.3


@pytest.fixture
def locks(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(redis_prefix)

    def make(ttl=TTL):
        return LeaderLock(client, keys.dispatcher_lock, keys.dispatcher_fence, ttl=ttl)

    yield make
    client.delete(keys.dispatcher_lock, keys.dispatcher_fence)
    client.close()


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_only_one_of_several_leads_while_the_leader_renews(locks):
    a, b, c = locks(), locks(), locks()
    assert a.acquire_or_renew()
    deadline = time.monotonic() + 3 * TTL  # outlive the ttl several times over, renewing
    while time.monotonic() < deadline:
        assert a.acquire_or_renew()
        assert not b.acquire_or_renew() and not c.acquire_or_renew()
        time.sleep(TTL / 5)
    assert a.is_leader and not b.is_leader and not c.is_leader


def test_a_standby_takes_over_after_expiry_with_the_next_fence(locks):
    a, b = locks(), locks()
    assert a.acquire_or_renew()
    started = time.monotonic()
    assert wait_until(b.acquire_or_renew)  # a stopped renewing: it died
    assert time.monotonic() - started >= TTL * 0.9  # not before the lock expired
    assert b.fence == a.fence + 1
    assert not a.acquire_or_renew()  # the old leader notices it lost the term
    assert a.fence is None and not a.is_leader


def test_a_released_lock_is_taken_at_once_and_every_term_has_a_new_fence(locks):
    a, b = locks(ttl=30), locks(ttl=30)
    assert a.acquire_or_renew()
    fences = [a.fence]
    a.release()
    assert not a.is_leader
    assert b.acquire_or_renew()
    fences.append(b.fence)
    b.release()
    assert a.acquire_or_renew()
    fences.append(a.fence)
    assert fences == [fences[0], fences[0] + 1, fences[0] + 2]


def test_release_by_a_former_leader_does_not_drop_the_new_one(locks):
    a, b = locks(), locks(ttl=30)
    assert a.acquire_or_renew()
    assert wait_until(b.acquire_or_renew)
    a.release()  # a still believes it leads; its release must not delete b's lock
    assert b.acquire_or_renew() and b.is_leader
    assert not locks().acquire_or_renew()
