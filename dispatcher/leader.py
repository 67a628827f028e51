"""Leader election over one Redis key with expiry, and a term number per leadership."""

from __future__ import annotations

import logging
import uuid

import redis

log = logging.getLogger("paxyo.dispatcher")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderLock:
    """``acquire_or_renew()`` each tick; True while this process leads.

    The lock expires ``ttl`` seconds after the last renewal, so a standby takes over within
    ``ttl`` plus one tick of the leader's death. Each new leadership increments a counter;
    ``fence`` is the current term, shown in logs, the dispatcher heartbeat and each job's meta.
    Nothing relies on it for safety: a leader that does not know it lost (a long pause) may
    still plan a tick, and what keeps two such leaders from putting one order in two live
    shards is the order leases in the database (paxyo.leases).
    """

    def __init__(self, client: redis.Redis, key: str, fence_key: str, ttl: float = 5.0) -> None:
        self.client = client
        self.key = key
        self.fence_key = fence_key
        self.ttl_ms = int(ttl * 1000)
        self.identity = uuid.uuid4().hex
        self.fence: int | None = None
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def is_leader(self) -> bool:
        return self.fence is not None

    def acquire_or_renew(self) -> bool:
        if self.fence is not None:
            if self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]):
                return True
            log.warning("leadership lost (term %s)", self.fence)
            self.fence = None
        if self.client.set(self.key, self.identity, nx=True, px=self.ttl_ms):
            self.fence = int(self.client.incr(self.fence_key))
            log.info("became leader (term %s)", self.fence)
            return True
        return False

    def release(self) -> None:
        if self.fence is not None:
            self._release(keys=[self.key], args=[self.identity])
            log.info("released leadership (term %s)", self.fence)
            self.fence = None
