"""Outbox relay: idempotent, ordered per user, and nothing lost when a publish never happened."""

from datetime import timedelta
from decimal import Decimal

import redis
from sqlalchemy import select, update

from paxyo.accounts import deposit
from paxyo.clock import utcnow
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.store.schema import outbox


def relay_for(engine, redis_url, prefix, **kw):
    return OutboxRelay(engine, redis.Redis.from_url(redis_url), RelayConfig(Keys(prefix), **kw))


def stream_ids(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)
    return [int(e[b"i"]) for _, e in client.xrange(Keys(prefix).events)]


def test_publishing_a_later_event_first_still_sends_the_users_events_in_order(
        engine, redis_url, redis_prefix):
    first = deposit(engine, 111, Decimal("1.00"), "a", 2).event
    other = deposit(engine, 222, Decimal("1.00"), "b", 2).event
    second = deposit(engine, 111, Decimal("2.00"), "c", 2).event
    relay = relay_for(engine, redis_url, redis_prefix)
    # the publisher of `first` is slow (or crashed): `second` is published first
    assert relay.publish_ids([second.outbox_id]) == 2
    assert relay.publish_ids([first.outbox_id]) == 0  # already there, recognised by id
    assert stream_ids(redis_url, redis_prefix) == [first.outbox_id, second.outbox_id]
    assert relay.backlog() == 1  # user 222's event waits for its own publisher or the sweeper
    assert relay.sweep(older_than=0) == 1
    assert stream_ids(redis_url, redis_prefix)[-1] == other.outbox_id
    assert relay.backlog() == 0


def test_repeat_publish_after_a_crash_before_marking_is_a_no_op(engine, redis_url, redis_prefix):
    event = deposit(engine, 111, Decimal("1.00"), "a", 2).event
    relay = relay_for(engine, redis_url, redis_prefix)
    relay.publish_ids([event.outbox_id])
    # simulate a crash between XADD and marking the row published
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE outbox SET published_at = NULL")
    assert relay.sweep(older_than=0) == 1
    assert stream_ids(redis_url, redis_prefix) == [event.outbox_id]


def test_history_is_bounded_and_the_floor_records_what_was_trimmed(
        engine, redis_url, redis_prefix):
    relay = relay_for(engine, redis_url, redis_prefix, history_size=3)
    events = [deposit(engine, 111, Decimal("1.00"), f"r{n}", 2).event for n in range(5)]
    relay.publish_ids([e.outbox_id for e in events])
    client = redis.Redis.from_url(redis_url)
    keys = Keys(redis_prefix)
    kept = [int(score) for _, score in client.zrange(keys.history(111), 0, -1, withscores=True)]
    assert kept == [e.outbox_id for e in events[2:]]
    assert int(client.hget(keys.history_floor, "111")) == events[1].outbox_id
    assert int(client.hget(keys.history_last, "111")) == events[-1].outbox_id


def test_the_sweeper_publishes_by_id_not_by_creation_time(engine, redis_url, redis_prefix):
    """created_at is read before the account lock and on each host's own clock, so a later
    id can carry an earlier time; the sweeper must still publish a user's events in id order,
    or a client resuming from the later id would never be sent the earlier one."""
    earlier = deposit(engine, 111, Decimal("1.00"), "a", 2).event
    later = deposit(engine, 111, Decimal("2.00"), "b", 2).event
    with engine.begin() as conn:  # the later id's clock was behind by a minute
        conn.execute(update(outbox).where(outbox.c.id == later.outbox_id)
                     .values(created_at=utcnow() - timedelta(seconds=60)))
    relay = relay_for(engine, redis_url, redis_prefix)
    assert relay.sweep(older_than=30) == 2
    assert stream_ids(redis_url, redis_prefix) == [earlier.outbox_id, later.outbox_id]
    assert relay.backlog() == 0


def test_publishing_after_redis_lost_its_scripts_loads_the_script_again(
        engine, redis_url, redis_prefix):
    relay = relay_for(engine, redis_url, redis_prefix, history_ttl=600)
    first = deposit(engine, 111, Decimal("1.00"), "a", 2).event
    assert relay.publish_ids([first.outbox_id]) == 1
    client = redis.Redis.from_url(redis_url)
    client.script_flush()  # as a Redis restart does
    second = deposit(engine, 111, Decimal("2.00"), "b", 2).event
    assert relay.publish_ids([second.outbox_id]) == 1
    assert stream_ids(redis_url, redis_prefix) == [first.outbox_id, second.outbox_id]
    keys = Keys(redis_prefix)
    for key in (keys.history(111), keys.history_times(111)):  # refreshed by each publish
        assert 600 < client.ttl(key) <= 660
    assert relay.backlog() == 0


def _rows(engine, ids):
    with engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id.in_(ids)).order_by(outbox.c.id)).all()


def test_an_earlier_event_reaching_redis_after_a_later_one_is_added_not_dropped(
        engine, redis_url, redis_prefix):
    """Publishers send a user's events in id order, but should an earlier one ever arrive
    after a later one (a fault campaign run once lost seven that way), it is still added:
    to the stream and, in id order, to the history a resuming client replays; and a repeat of
    it, or of anything below the floor, is still a no-op."""
    events = [deposit(engine, 111, Decimal("1.00"), f"e{n}", 2).event for n in range(4)]
    first, early, late, last = (e.outbox_id for e in events)
    relay = relay_for(engine, redis_url, redis_prefix, history_size=3)
    assert relay.publish_rows(_rows(engine, [first]), mark=False) == 1
    assert relay.publish_rows(_rows(engine, [late]), mark=False) == 1  # `early` is skipped
    assert relay.publish_rows(_rows(engine, [early]), mark=False) == 1  # ...and comes late
    assert relay.publish_rows(_rows(engine, [first, early, late]), mark=False) == 0  # repeats
    assert stream_ids(redis_url, redis_prefix) == [first, late, early]
    client, keys = redis.Redis.from_url(redis_url), Keys(redis_prefix)
    history = [int(s) for _, s in client.zrange(keys.history(111), 0, -1, withscores=True)]
    assert history == [first, early, late]
    assert int(client.hget(keys.history_last, "111")) == late  # the late one leaves it be
    assert relay.publish_rows(_rows(engine, [last]), mark=False) == 1  # trims `first`
    assert int(client.hget(keys.history_floor, "111")) == first
    assert relay.publish_rows(_rows(engine, [first]), mark=False) == 0  # below the floor
    assert stream_ids(redis_url, redis_prefix) == [first, late, early, last]
