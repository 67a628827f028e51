"""Per-provider protection shared by every worker through Redis.

- :class:`RateLimiter`: a fixed one-minute window of calls per provider; 1 or 50 workers
  draw from the same budget.
- :class:`CircuitBreaker`: after ``threshold`` consecutive failures a provider is left alone
  for a cool-down that doubles on every failed probe (bounded); when it ends, one worker
  probes, and a success closes the circuit again.
"""

from __future__ import annotations

import enum
import logging
import time

import redis

from paxyo.keys import Keys

log = logging.getLogger("paxyo.providers")

_TAKE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: Keys, per_minute: int) -> None:
        self.client = client
        self.keys = keys
        self.per_minute = per_minute
        self._take = client.register_script(_TAKE)

    def try_acquire(self, provider: str, now: float | None = None) -> bool:
        window = int((now or time.time()) // 60)
        return bool(self._take(keys=[self.keys.rate_limit(provider, window)],
                               args=[self.per_minute]))

    @staticmethod
    def next_window(now: float | None = None) -> float:
        """Seconds until the next window opens."""
        now = now or time.time()
        return 60 - (now % 60)


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, client: redis.Redis, keys: Keys, *, threshold: int = 5,
                 cooldown: float = 15.0, max_cooldown: float = 300.0) -> None:
        self.client = client
        self.keys = keys
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown

    def state(self, provider: str, now: float | None = None) -> CircuitState:
        data = self.client.hgetall(self.keys.circuit(provider))
        opened_until = float(data.get(b"open_until", 0))
        if not opened_until:
            return CircuitState.CLOSED
        return CircuitState.OPEN if (now or time.time()) < opened_until else \
            CircuitState.HALF_OPEN

    def allow(self, provider: str) -> tuple[bool, float]:
        """(may this worker call now, seconds to wait otherwise)."""
        now = time.time()
        state = self.state(provider, now)
        if state is CircuitState.CLOSED:
            return True, 0.0
        key = self.keys.circuit(provider)
        if state is CircuitState.HALF_OPEN and self.client.set(key + ":probe", 1, nx=True, ex=30):
            log.info("circuit %s half-open: probing", provider)
            return True, 0.0
        opened_until = float(self.client.hget(key, "open_until") or 0)
        return False, max(1.0, opened_until - now)

    def record_success(self, provider: str) -> None:
        key = self.keys.circuit(provider)
        if self.client.hget(key, "open_until"):
            log.info("circuit %s closed: provider answers again", provider)
        self.client.delete(key, key + ":probe")

    def record_failure(self, provider: str) -> None:
        key = self.keys.circuit(provider)
        failures = int(self.client.hincrby(key, "failures", 1))
        if failures < self.threshold:
            return
        previous = float(self.client.hget(key, "cooldown") or 0)
        cooldown = min(self.max_cooldown, previous * 2 if previous else self.cooldown)
        self.client.hset(key, mapping={"open_until": time.time() + cooldown,
                                       "cooldown": cooldown})
        self.client.delete(key + ":probe")
        log.warning("circuit %s open for %.0fs after %d failures", provider, cooldown, failures)
