"""Outbox relay: committed events to Redis Streams, each exactly once per id.

After a transaction commits, its outbox rows are published: to the global stream the
gateways read and to the user's bounded history that WebSocket resume replays from. A Lua
script makes publishing idempotent: an event already in the user's history (or below its
floor) is not added again, so a repeat (by the sweeper after a crash between publish and mark,
or by a worker publishing a later event of the same user before the earlier one is marked) is
a no-op, recognisable by its id, and an earlier event that arrives after a later one is still
added. Rows are marked published only after Redis accepted them; the sweeper picks up whatever
a crash left behind.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
from redis.exceptions import NoScriptError
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Row

from paxyo.clock import epoch_ms, utcnow
from paxyo.events import event_bytes, mark_published, unpublished_rows
from paxyo.keys import Keys
from paxyo.store.engine import transactional
from paxyo.store.schema import outbox

log = logging.getLogger("paxyo.relay")

# KEYS: events stream, history, history times, floor hash, last-published hash
# ARGV: outbox id, user id, created ms, payload, stream maxlen, history size, min created ms,
#       history TTL in seconds (both history keys get it, as every publish refreshes them)
# The floor is the highest id no longer replayable; when a history expired as a whole, every
# id up to the last one published for that user is gone too. An id above the last one
# published for its user is new. One at or below it is a repeat when it is in the history or
# at or below the floor (whatever leaves the history raises the floor past it); otherwise it
# is an earlier event arriving after a later one, and is added (the history orders by id, so
# a resuming client gets it in place; a connected one gets it late rather than never).
# Publishers send a user's events in id order (paxyo.events.unpublished_rows), so that is
# rare, but the fault campaign found one. (The times set is no test of a repeat: trimmed by
# created time, it may drop an id above the floor, as a later id can carry an earlier time.)
_PUBLISH = """
local id = tonumber(ARGV[1])
local floor = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
local last = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
if last > floor and redis.call('EXISTS', KEYS[3]) == 0 then
  floor = last
  redis.call('HSET', KEYS[4], ARGV[2], floor)
end
if id <= last then
  if id <= floor or redis.call('ZCOUNT', KEYS[2], id, id) > 0 then
    return 0
  end
else
  redis.call('HSET', KEYS[5], ARGV[2], id)
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'u', ARGV[2], 'i', ARGV[1],
           't', ARGV[3], 'd', ARGV[4])
redis.call('ZADD', KEYS[2], id, ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[1])
local trimmed = 0
local n = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if n > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - 1, 'WITHSCORES')
  trimmed = tonumber(old[#old])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - 1)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[7])
for _, old_id in ipairs(expired) do
  local v = tonumber(old_id)
  if v > trimmed then trimmed = v end
end
if trimmed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', trimmed)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[7])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
  if trimmed > floor then redis.call('HSET', KEYS[4], ARGV[2], trimmed) end
end
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[8])
return 1
"""

STREAM_MAXLEN = 100_000


@dataclass(frozen=True)
class RelayConfig:
    keys: Keys
    history_size: int = 100
    history_ttl: float = 86400.0
    stream_maxlen: int = STREAM_MAXLEN


class OutboxRelay:
    """Publishes outbox rows to Redis and marks them published."""

    def __init__(self, engine: Engine, redis_client: redis.Redis, config: RelayConfig,
                 on_published: Callable[[int], object] | None = None) -> None:
        """``on_published(n)`` is told how many events each publish added (for metrics)."""
        self.engine = engine
        self.redis = redis_client
        self.config = config
        self.on_published = on_published
        self._sha = hashlib.sha1(_PUBLISH.encode()).hexdigest()  # loaded on first use

    def publish_ids(self, outbox_ids: Sequence[int]) -> int:
        """Publish these rows (just committed) and the rows that must precede them (see
        :func:`unpublished_rows`), and mark them; returns how many were new to Redis."""
        if not outbox_ids:
            return 0
        with self.engine.connect() as conn:
            rows = unpublished_rows(conn, outbox_ids)
        return self.publish_rows(rows)

    def mark_published(self, outbox_ids: Sequence[int]) -> None:
        """:func:`mark_published` in a transaction of its own."""
        if outbox_ids:
            transactional(self.engine, lambda conn: mark_published(conn, outbox_ids))

    def sweep(self, *, older_than: float = 2.0, batch: int = 500) -> int:
        """Publish rows left unpublished (by a crash, or Redis being down); returns rows swept.

        By id, not by time: every unpublished row up to the highest id that is
        ``older_than`` seconds old, in id order. ``created_at`` is read before the account
        lock and on each host's clock, so a later id may carry an earlier time; sweeping by
        time could then publish a user's later event before an earlier one. The age only
        keeps the sweeper from racing the publish that follows each commit.
        """
        cutoff = utcnow() - timedelta(seconds=older_than)
        with self.engine.connect() as conn:
            highest = conn.execute(
                select(func.max(outbox.c.id)).where(outbox.c.published_at.is_(None),
                                                    outbox.c.created_at <= cutoff)).scalar()
        total, after = 0, 0
        while highest is not None:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(outbox).where(outbox.c.published_at.is_(None),
                                         outbox.c.id > after, outbox.c.id <= highest)
                    .order_by(outbox.c.id).limit(batch)).all()
            if not rows:
                break
            self.publish_rows(rows)
            total += len(rows)
            after = rows[-1].id
        return total

    def _run_script(self, calls: list[tuple[object, ...]]) -> list[object]:
        """The publish script once per call (5 keys, then its arguments), in one MULTI/EXEC.

        By its SHA: redis-py's script objects ask Redis whether the script is loaded before
        every pipeline, a round trip per publish. Should Redis have lost it (a restart), it
        is loaded again and the calls repeated, which the script makes harmless. MULTI/EXEC
        makes a missing script fail every call alike: in a plain pipeline another client's
        SCRIPT LOAD could land between two calls, so that a user's later event went into
        Redis first and the earlier ones, repeated, after it (found by
        tests/test_relay_restart_order.py, on Redis 7, which forgets scripts on restart).
        """
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=True)
            for call in calls:
                pipe.evalsha(self._sha, 5, *call)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                self._sha = self.redis.script_load(_PUBLISH)
        raise AssertionError("unreachable")  # pragma: no cover

    def backlog(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(outbox)
                                    .where(outbox.c.published_at.is_(None))).scalar_one())

    def publish_rows(self, rows: Sequence[Row], *, mark: bool = True) -> int:
        """Publish outbox rows (in id order) to Redis; returns how many were new to it.

        ``mark=False`` leaves marking them to the caller, in a later write of its own
        (``paxyo.events.mark_published``): until then a sweep may publish them again, which
        the script recognises."""
        if not rows:
            return 0
        keys, config = self.config.keys, self.config
        min_ms = epoch_ms(utcnow()) - int(config.history_ttl * 1000)
        ttl = int(config.history_ttl) + 60
        results = self._run_script([
            (keys.events, keys.history(row.user_id), keys.history_times(row.user_id),
             keys.history_floor, keys.history_last,
             row.id, row.user_id, epoch_ms(row.created_at),
             event_bytes(row.id, row.type, row.payload), config.stream_maxlen,
             config.history_size, min_ms, ttl) for row in rows])
        added = sum(1 for r in results if r == 1)
        if mark:
            self.mark_published([row.id for row in rows])
        if self.on_published is not None and added:
            self.on_published(added)
        if added < len(rows):  # routine while a worker's publish is not yet marked
            log.debug("relay: %d of %d events were already in Redis (repeat publish)",
                     len(rows) - added, len(rows))
        return added
