"""wsgateway.history.read_replay against a real Redis, after the relay published real events."""

import asyncio
from decimal import Decimal

import redis
import redis.asyncio as aioredis
from sqlalchemy import select

from paxyo.accounts import deposit
from paxyo.events import event_bytes, event_id
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.store.schema import outbox
from wsgateway.history import Replay, read_replay

USER = 111


def publish(engine, redis_url, prefix, count, *, user=USER, history_size=100) -> list[int]:
    """``count`` deposits for ``user``, published by the relay; their outbox ids."""
    ids = [deposit(engine, user, Decimal("1.00"), f"ref-{user}-{n}", 2).event.outbox_id
           for n in range(count)]
    client = redis.Redis.from_url(redis_url)
    relay = OutboxRelay(engine, client, RelayConfig(Keys(prefix), history_size=history_size))
    assert relay.publish_ids(ids) == count
    client.close()
    return ids


def replay(redis_url, prefix, last_id, user=USER) -> Replay:
    async def run() -> Replay:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await read_replay(client, Keys(prefix), user, last_id)
        finally:
            await client.aclose()
    return asyncio.run(run())


def exact_bytes(engine, ids) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox).where(outbox.c.id.in_(ids))
                            .order_by(outbox.c.id)).all()
    return [(row.id, event_bytes(row.id, row.type, row.payload)) for row in rows]


def stream_end(redis_url, prefix) -> str:
    client = redis.Redis.from_url(redis_url)
    [(entry_id, _)] = client.xrevrange(Keys(prefix).events, count=1)
    client.close()
    return entry_id.decode()


def test_replay_after_a_last_id_sends_the_later_events_as_published(
        engine, redis_url, redis_prefix):
    ids = publish(engine, redis_url, redis_prefix, 4)
    publish(engine, redis_url, redis_prefix, 2, user=222)  # someone else's: never replayed
    result = replay(redis_url, redis_prefix, event_id(ids[1]))
    assert result.recovered
    assert result.events == exact_bytes(engine, ids[2:])
    assert result.replayed_ids == frozenset(ids[2:])
    assert result.last_id == event_id(ids[-1])
    assert result.stream_end == stream_end(redis_url, redis_prefix)


def test_nothing_newer_than_the_last_id_is_recovered_and_empty(engine, redis_url, redis_prefix):
    ids = publish(engine, redis_url, redis_prefix, 3)
    result = replay(redis_url, redis_prefix, f" {event_id(ids[-1])} ")
    assert (result.recovered, result.events, result.last_id) == (True, [], event_id(ids[-1]))


def test_no_usable_last_id_is_not_recovered_and_replays_nothing(engine, redis_url,
                                                                redis_prefix):
    ids = publish(engine, redis_url, redis_prefix, 2)
    for last_id in (None, "", "abc", "-1", "1e3", "\uff11", "\u00b2", "\u0663",
                    "9" * 21, event_id(ids[-1] + 1)):  # newer than anything published: Redis forgot
        result = replay(redis_url, redis_prefix, last_id)
        assert (result.recovered, result.events) == (False, []), last_id
        assert result.last_id == event_id(ids[-1])


def test_a_last_id_older_than_the_trimmed_floor_is_not_recovered(engine, redis_url,
                                                                 redis_prefix):
    ids = publish(engine, redis_url, redis_prefix, 5, history_size=2)  # keeps ids[3:]
    for seen in ids[:2]:
        result = replay(redis_url, redis_prefix, event_id(seen))
        assert (result.recovered, result.events) == (False, []), seen
    at_floor = replay(redis_url, redis_prefix, event_id(ids[2]))  # the newest trimmed one
    assert at_floor.recovered
    assert at_floor.events == exact_bytes(engine, ids[3:])


def test_an_expired_history_recovers_nothing_older_than_the_last_published(
        engine, redis_url, redis_prefix):
    ids = publish(engine, redis_url, redis_prefix, 3)
    client = redis.Redis.from_url(redis_url)
    client.delete(Keys(redis_prefix).history(USER))  # what its TTL does when it runs out
    client.close()
    result = replay(redis_url, redis_prefix, event_id(ids[0]))
    assert (result.recovered, result.events) == (False, [])
    latest = replay(redis_url, redis_prefix, event_id(ids[-1]))
    assert (latest.recovered, latest.events) == (True, [])


def test_a_user_with_nothing_published_has_no_last_id(redis_url, redis_prefix):
    result = replay(redis_url, redis_prefix, event_id(1))
    assert (result.recovered, result.last_id, result.stream_end) == (False, None, "0-0")
