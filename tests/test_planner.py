"""dispatcher.planner on a fixed clock: shards of at most 100, topped up, leased, most overdue
first. Every call passes an explicit ``now``; nothing sleeps."""

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import update

from dispatcher.planner import plan_shards
from paxyo.accounts import deposit
from paxyo.orders import NewOrder, place_order
from paxyo.store.schema import orders

NOW = datetime(2026, 11, 30, 12, 0, 0)
D = Decimal


def seed(engine, count, user=111, provider="sim", start=1, due=NOW - timedelta(seconds=1)):
    deposit(engine, user, D("10.00") * count, f"seed-{user}-{start}", 2)
    for oid in range(start, start + count):
        place_order(engine, NewOrder(oid, user, provider, str(70000 + oid), 1000, D("10.00")),
                    decimals=2, poll_interval=30)
    due_at(engine, range(start, start + count), due)


def due_at(engine, ids, moment):
    with engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.id.in_(list(ids)))
                     .values(next_check_at=moment))


def plan(engine, now=NOW, **kw):
    return plan_shards(engine, now=now, poll_interval=30, lease_seconds=60, **kw)


def test_shards_hold_at_most_100_orders_of_one_provider_and_each_order_once(engine):
    seed(engine, 250)
    seed(engine, 30, user=222, provider="other", start=1000)
    shards = plan(engine)
    assert sorted((s.provider, len(s.order_ids)) for s in shards) == \
        [("other", 30), ("sim", 50), ("sim", 100), ("sim", 100)]
    assert all(s.provider == "other" for s in shards if s.order_ids[0] >= 1000)
    ids = [i for s in shards for i in s.order_ids]
    assert len(ids) == len(set(ids)) == 280
    assert len({s.token for s in shards}) == 4


def test_leased_orders_are_in_no_other_shard_until_the_lease_expires(engine):
    seed(engine, 10)
    [first] = plan(engine)
    with engine.connect() as conn:
        leases = conn.execute(orders.select()).all()
    assert {(r.lease_token, r.lease_until) for r in leases} == \
        {(first.token, NOW + timedelta(seconds=60))}
    assert plan(engine) == []  # another dispatcher gets nothing
    assert plan(engine, now=NOW + timedelta(seconds=59)) == []
    [again] = plan(engine, now=NOW + timedelta(seconds=61))
    assert again.order_ids == first.order_ids and again.token != first.token


def test_a_part_full_shard_is_topped_up_with_orders_due_within_half_the_interval(engine):
    seed(engine, 150)
    due_at(engine, range(21, 101), NOW + timedelta(seconds=5))      # inside the 15 s window
    due_at(engine, range(101, 151), NOW + timedelta(seconds=20))    # outside it
    [shard] = plan(engine)
    assert sorted(shard.order_ids) == list(range(1, 101))


def test_top_up_takes_the_soonest_due_and_only_what_fills_the_shard(engine):
    seed(engine, 130)
    due_at(engine, range(91, 121), NOW + timedelta(seconds=10))
    due_at(engine, range(121, 131), NOW + timedelta(seconds=2))
    [shard] = plan(engine)  # 90 due + the 10 soonest of the window
    assert sorted(shard.order_ids) == list(range(1, 91)) + list(range(121, 131))


def test_orders_not_yet_due_or_closed_are_not_planned(engine):
    seed(engine, 5, due=NOW + timedelta(seconds=60))
    assert plan(engine) == []
    due_at(engine, range(1, 6), NOW - timedelta(seconds=1))
    with engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.id <= 2).values(status_class="canceled"))
    assert [sorted(s.order_ids) for s in plan(engine)] == [[3, 4, 5]]


def test_the_most_overdue_shards_go_first_when_room_is_short(engine):
    seed(engine, 300)
    due_at(engine, range(201, 301), NOW - timedelta(seconds=60))
    due_at(engine, range(101, 201), NOW - timedelta(seconds=30))
    assert [sorted(s.order_ids) for s in plan(engine, max_shards=1)] == [list(range(201, 301))]
    assert [sorted(s.order_ids) for s in plan(engine, max_shards=1)] == [list(range(101, 201))]


def test_short_of_room_the_most_overdue_shards_go_first_across_providers(engine):
    seed(engine, 200, provider="late", due=NOW - timedelta(seconds=60))
    seed(engine, 100, user=222, provider="punctual", start=1000)
    shards = plan(engine, max_shards=2)
    assert [(s.provider, len(s.order_ids)) for s in shards] == [("late", 100), ("late", 100)]
