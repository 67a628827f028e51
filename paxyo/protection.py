"""Per-provider protection shared by every worker through Redis.

- :class:`RateLimiter`: a fixed one-minute window of calls per provider; 1 or 50 workers
  draw from the same budget.
- :class:`CircuitBreaker`: after ``threshold`` consecutive failures a provider is left alone
  for a cool-down; when it ends, one worker probes. A success closes the circuit; a failed
  probe opens it again for twice as long (bounded). Failures of shards that were already in
  flight when it opened change nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

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


# KEYS: circuit hash, probe key. ARGV: now, threshold, base cooldown, max cooldown.
# Returns {cool-down as a string, failures} when this failure opened the circuit, else false.
_FAIL = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > now then return false end
local cooldown
if open_until > 0 then
  local previous = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[3])
  cooldown = math.min(tonumber(ARGV[4]), previous * 2)
elseif failures >= tonumber(ARGV[2]) then
  cooldown = tonumber(ARGV[3])
else
  return false
end
redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown), 'cooldown', tostring(cooldown))
redis.call('DEL', KEYS[2])
return {tostring(cooldown), failures}
"""


class CircuitBreaker:
    def __init__(self, client: redis.Redis, keys: Keys, *, threshold: int = 5,
                 cooldown: float = 15.0, max_cooldown: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = keys
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self._fail = client.register_script(_FAIL)

    def state(self, provider: str, now: float | None = None) -> CircuitState:
        data = self.client.hgetall(self.keys.circuit(provider))
        opened_until = float(data.get(b"open_until", 0))
        if not opened_until:
            return CircuitState.CLOSED
        return CircuitState.OPEN if (now or self.clock()) < opened_until else \
            CircuitState.HALF_OPEN

    def allow(self, provider: str) -> tuple[bool, float]:
        """(may this worker call now, seconds to wait otherwise)."""
        now = self.clock()
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
        """Close the circuit and forget the failures: one round trip, as every call ends
        here."""
        key = self.keys.circuit(provider)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(key, "open_until")
        pipe.delete(key, key + ":probe")
        was_open, _ = pipe.execute()
        if was_open:
            log.info("circuit %s closed: provider answers again", provider)

    def record_failure(self, provider: str) -> None:
        """Count a failed call; open the circuit at the threshold, or again after a failed
        probe (twice as long). While it is open, failures of shards that were already in
        flight only count."""
        key = self.keys.circuit(provider)
        opened = self._fail(keys=[key, key + ":probe"],
                            args=[repr(self.clock()), self.threshold, self.cooldown,
                                  self.max_cooldown])
        if opened:
            cooldown, failures = opened
            log.warning("circuit %s open for %.0fs after %d failures", provider,
                        float(cooldown), failures)
