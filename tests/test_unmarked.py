"""Adversarial tests of a job's publish-now, mark-later outbox handling (workers.unmarked).

Invariants: every committed outbox event reaches the stream once per id; per user in id
order; every published row is eventually marked; a Redis or database failure loses nothing
and never marks a row Redis does not hold. Real Redis, real databases; failures are injected
by making one function raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

import workers.jobs as jobs
from dispatcher.planner import plan_shards
from monitoring.metrics import process_metrics
from paxyo.clock import utcnow
from paxyo.events import record_event, unpublished_rows
from paxyo.keys import Keys
from paxyo.relay import OutboxRelay, RelayConfig
from paxyo.store.engine import transactional
from paxyo.store.schema import outbox
from tests.test_jobs import seed
from workers.context import build_context
from workers.unmarked import UnmarkedEvents


def stream_ids(client: redis.Redis, keys: Keys) -> list[int]:
    return [int(fields[b"i"]) for _, fields in client.xrange(keys.events)]


def stream_users(client: redis.Redis, keys: Keys) -> list[tuple[int, int]]:
    return [(int(f[b"u"]), int(f[b"i"])) for _, f in client.xrange(keys.events)]


def all_published_once_in_order(client: redis.Redis, keys: Keys) -> None:
    pairs = stream_users(client, keys)
    ids = [i for _, i in pairs]
    assert len(ids) == len(set(ids)), f"an id reached the stream twice: {ids}"
    per_user: dict[int, list[int]] = {}
    for user, i in pairs:
        per_user.setdefault(user, []).append(i)
    for user, seq in per_user.items():
        assert seq == sorted(seq), f"user {user}'s events out of id order: {seq}"


def outbox_rows(engine, after: int = 0):
    with engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id > after)
                            .order_by(outbox.c.id)).all()


def mark_seed_published(engine) -> int:
    """The seed's own events are not the job's: mark them; the highest id so far."""
    with engine.begin() as conn:
        conn.execute(update(outbox).values(published_at=utcnow()))
        return int(conn.execute(select(func.max(outbox.c.id))).scalar() or 0)


def cancel_one_per_shard(simulator, shards) -> list[int]:
    """Cancel the lowest order of each shard at the provider (the planner's split of the
    orders differs between databases); returns their ids."""
    oids = [min(ids) for _, ids, _ in shards]
    for oid in oids:
        simulator.set_order(7000 + oid, status="Canceled", remains=0)
    return oids


def shards_of(engine):
    return [(s.provider, s.order_ids, s.token)
            for s in plan_shards(engine, now=utcnow(), poll_interval=30, lease_seconds=60)]


def guard_marks(monkeypatch, ctx) -> list[list[int]]:
    """Fail the test when any id is marked published while the stream lacks it (both the
    apply's marks and a transaction of their own); returns the marks seen."""
    import paxyo.observations as observations

    seen: list[list[int]] = []
    keys = ctx.relay.config.keys
    client = redis.Redis.from_url(ctx.settings.redis_url)

    def check(ids) -> None:
        if ids:
            held = set(stream_ids(client, keys))
            missing = sorted(set(ids) - held)
            assert not missing, f"marked published but not in Redis: {missing}"
            seen.append(sorted(ids))

    real_apply_mark = observations.mark_published
    real_relay_mark = OutboxRelay.mark_published

    def apply_mark(conn, ids):
        check(ids)
        return real_apply_mark(conn, ids)

    def relay_mark(self, ids):
        check(ids)
        return real_relay_mark(self, ids)

    monkeypatch.setattr(observations, "mark_published", apply_mark)
    monkeypatch.setattr(OutboxRelay, "mark_published", relay_mark)
    return seen


@pytest.fixture
def any_settings(settings, any_database_url):
    return settings.with_overrides(database_url=any_database_url)


@contextlib.contextmanager
def job_of_two_shards(engine, settings, simulator) -> Iterator[tuple[object, int, list]]:
    """A worker context, and two shards of 150 open orders of user 111 with one order each
    cancelled at the provider; the seed's own events count as published. Yields the context,
    the last outbox id before the job, and the shards."""
    ctx = build_context(settings, process_metrics())
    try:
        seed(engine, 150)
        before = mark_seed_published(engine)
        shards = shards_of(engine)
        cancel_one_per_shard(simulator, shards)
        yield ctx, before, shards
    finally:
        ctx.close()


def _db_down(*_args, **_kwargs):
    raise OperationalError("UPDATE outbox", {}, Exception("server has gone away"))


# ---------------------------------------------------------------------------------------------
# Problem: the relay's dedupe forgets an id whose created_at is not the newest (repeat re-adds)
# ---------------------------------------------------------------------------------------------


def test_a_repeat_publish_after_a_history_trim_is_a_no_op_whatever_the_created_times(
        any_engine, redis_url, redis_prefix):
    """A later id may carry an earlier created_at (workers read their clock before waiting
    for the account lock; hosts' clocks differ, as paxyo.relay.sweep says). The history
    keeps the newest ids, but its dedupe set (history times) is trimmed by created_at, so it
    forgets an id still above the floor; the routine repeat publish of a not-yet-marked row
    (another worker, the sweeper) then adds it to the stream a second time, after later ids.

    FAILS: paxyo/relay.py _PUBLISH, ``ZREMRANGEBYRANK KEYS[3] 0 -(size+1)`` trims the times
    set by score (created ms) instead of removing exactly the ids trimmed from the history.
    """
    client = redis.Redis.from_url(redis_url)
    keys = Keys(redis_prefix)
    relay = OutboxRelay(any_engine, client, RelayConfig(keys, history_size=2))
    now = utcnow()

    def write(conn):
        return [record_event(conn, 5, "balance.updated", {"n": 1}, now).outbox_id,
                # written after the first under the account lock, its clock read before it
                record_event(conn, 5, "balance.updated", {"n": 2},
                             now - timedelta(seconds=2)).outbox_id,
                record_event(conn, 5, "balance.updated", {"n": 3}, now).outbox_id]

    ids = transactional(any_engine, write)
    with any_engine.connect() as conn:
        rows = unpublished_rows(conn, ids)
    assert relay.publish_rows(rows, mark=False) == 3   # the worker's publish
    relay.publish_rows(rows)                           # a repeat (sweeper / another worker)
    all_published_once_in_order(client, keys)
    client.close()


def test_a_jobs_events_sharing_a_millisecond_are_repeated_as_no_ops_across_a_power_of_ten(
        engine, settings, simulator, monkeypatch):
    """No clock skew at all: one apply's events share ``now`` (one created ms). The times set
    orders equal scores by member *string*, so "100" ranks before "99" and is trimmed while
    the history (and its floor) keeps it. The job's end-of-job mark fails (database down),
    which the design leaves to the sweeper as harmless: the sweep re-adds id 100.

    FAILS (same root cause as the test above: paxyo/relay.py, the trim of KEYS[3])."""
    ctx = build_context(settings.with_overrides(history_size=2), process_metrics())
    try:
        seed(engine, 3)
        before = mark_seed_published(engine)
        pad = 98 - before
        assert pad >= 0
        transactional(engine, lambda conn: [record_event(conn, 999, "balance.updated", {},
                                                         utcnow()) for _ in range(pad)])
        mark_seed_published(engine)
        for oid in (1, 2, 3):
            simulator.set_order(7000 + oid, status="Canceled", remains=0)
        monkeypatch.setattr(OutboxRelay, "mark_published", _db_down)
        jobs.run_shards(ctx, shards_of(engine))
        rows = outbox_rows(engine, 98)
        assert [r.id for r in rows] == [99, 100, 101]
        assert len({r.created_at for r in rows}) == 1
        assert all(r.published_at is None for r in rows)   # left for the sweeper
        monkeypatch.undo()
        ctx.relay.sweep(older_than=0)
        all_published_once_in_order(ctx.redis, ctx.relay.config.keys)
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------
# Invariants that hold (nasty cases)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before_a_publishes", "after_a_publishes"])
def test_two_workers_interleaved_on_one_user_publish_each_event_once_in_id_order(
        any_engine, any_settings, simulator, monkeypatch, when):
    """Job A (two shards of user 111) and job B (a third shard, another worker) interleave:
    B applies, publishes and ends between A's first commit and its publish, or between
    A's publish and its mark. Every event once, in id order, every row marked, and no mark
    of an id Redis lacks."""
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 60.0)
    ctx_a = build_context(any_settings, process_metrics())
    ctx_b = build_context(any_settings, process_metrics())
    try:
        seed(any_engine, 250)
        before = mark_seed_published(any_engine)
        shards = shards_of(any_engine)
        assert len(shards) == 3
        cancel_one_per_shard(simulator, shards)
        a_shards, b_shards = shards[:2], shards[2:]
        marks = guard_marks(monkeypatch, ctx_a)
        b_done: list[object] = []

        def run_b() -> None:
            thread = threading.Thread(
                target=lambda: b_done.append(jobs.run_shards(ctx_b, b_shards)))
            thread.start()
            thread.join(60)
            assert b_done, "job B did not finish"

        real_publish = jobs._publish

        def publish(ctx, rows, unmarked):
            first = ctx is ctx_a and not b_done and rows
            if first and when == "before_a_publishes":
                run_b()
            real_publish(ctx, rows, unmarked)
            if first and when == "after_a_publishes":
                assert unmarked.ids  # A's event is in Redis and not yet marked
                run_b()

        monkeypatch.setattr(jobs, "_publish", publish)
        jobs.run_shards(ctx_a, a_shards)
        assert b_done
        rows = outbox_rows(any_engine, before)
        assert len(rows) == 3
        assert all(r.published_at is not None for r in rows)
        assert sorted(stream_ids(ctx_a.redis, ctx_a.relay.config.keys)) == [r.id for r in rows]
        all_published_once_in_order(ctx_a.redis, ctx_a.relay.config.keys)
        assert marks  # the guard saw the marks
    finally:
        ctx_a.close()
        ctx_b.close()


@pytest.mark.parametrize("fail", ["first", "every"])
def test_redis_failing_after_the_apply_commits_loses_nothing_and_marks_nothing_unheld(
        any_engine, any_settings, simulator, monkeypatch, fail):
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 60.0)
    with job_of_two_shards(any_engine, any_settings, simulator) as (ctx, before, shards):
        assert len(shards) == 2
        guard_marks(monkeypatch, ctx)
        real = ctx.relay.publish_rows
        calls: list[int] = []

        def publish_rows(rows, *, mark=True):
            calls.append(len(rows))
            if fail == "every" or len(calls) == 1:
                raise redis.ConnectionError("Redis went away")
            return real(rows, mark=mark)

        monkeypatch.setattr(ctx.relay, "publish_rows", publish_rows)
        jobs.run_shards(ctx, shards)
        rows = outbox_rows(any_engine, before)
        assert len(rows) == 2
        keys = ctx.relay.config.keys
        if fail == "first":  # the second shard (same user) published the first's event too
            assert calls == [1, 2]
            assert stream_ids(ctx.redis, keys) == [r.id for r in rows]
            assert all(r.published_at is not None for r in rows)
        else:
            assert stream_ids(ctx.redis, keys) == []
            assert all(r.published_at is None for r in rows)
            monkeypatch.setattr(ctx.relay, "publish_rows", real)
            assert ctx.relay.sweep(older_than=0) == 2
            assert stream_ids(ctx.redis, keys) == [r.id for r in rows]
            assert all(r.published_at is not None for r in outbox_rows(any_engine, before))
        all_published_once_in_order(ctx.redis, keys)


def _slow_second_check(monkeypatch, seconds: float) -> None:
    """The job's second shard waits ``seconds`` (a slow provider) before its call."""
    real = jobs._check
    started: list[int] = []

    async def check(ctx, shard, unmarked):
        started.append(1)
        if len(started) == 2:
            await asyncio.sleep(seconds)
        return await real(ctx, shard, unmarked)

    monkeypatch.setattr(jobs, "_check", check)


def test_the_database_failing_in_the_timer_and_at_the_jobs_end_leaves_it_to_the_sweeper(
        any_engine, any_settings, simulator, monkeypatch):
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 0.05)
    with job_of_two_shards(any_engine, any_settings, simulator) as (ctx, before, shards):
        _slow_second_check(monkeypatch, 0.6)
        failed: list[list[int]] = []

        def down(self, ids):
            failed.append(sorted(ids))
            _db_down()

        monkeypatch.setattr(OutboxRelay, "mark_published", down)
        results = jobs.run_shards(ctx, shards)   # the job itself succeeds
        assert sum(r["changed"] for r in results) == 2
        rows = outbox_rows(any_engine, before)
        # the timer tried the first shard's event alone; the second shard published it again
        # (still unpublished in the database, same user) and the job's end tried both
        assert failed == [[rows[0].id], [rows[0].id, rows[1].id]]
        assert all(r.published_at is None for r in rows)
        keys = ctx.relay.config.keys
        assert stream_ids(ctx.redis, keys) == [r.id for r in rows]
        monkeypatch.undo()
        assert ctx.relay.sweep(older_than=0) == 2   # repeats: no-ops, then marked
        assert stream_ids(ctx.redis, keys) == [r.id for r in rows]
        assert all(r.published_at is not None for r in outbox_rows(any_engine, before))


def test_a_jobs_timer_cannot_fire_into_the_next_job_on_the_same_loop(
        engine, settings, simulator, monkeypatch):
    """WorkerContext keeps one loop per process: job 1's timer is cancelled at its end, and
    every mark job 2 makes (timer or apply) names only ids Redis holds."""
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 0.3)
    ctx = build_context(settings, process_metrics())
    try:
        seed(engine, 150)
        before = mark_seed_published(engine)
        first, second = shards_of(engine)
        cancel_one_per_shard(simulator, [first, second])
        marks = guard_marks(monkeypatch, ctx)
        jobs.run_shards(ctx, [first])
        [job1] = outbox_rows(engine, before)
        assert job1.published_at is not None and marks == [[job1.id]]
        pending = [h for h in ctx.loop._scheduled
                   if not h.cancelled() and getattr(h._callback, "__self__", None).__class__
                   is UnmarkedEvents]
        assert pending == []
        # job 2 idles on the loop well past job 1's timer
        with engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.id == job1.id).values(published_at=None))
        marks.clear()
        real = jobs._check

        async def slow(c, shard, unmarked):
            await asyncio.sleep(0.8)
            return await real(c, shard, unmarked)

        monkeypatch.setattr(jobs, "_check", slow)
        jobs.run_shards(ctx, [second])
        [_, job2] = outbox_rows(engine, before)
        # job 1's id (unmarked again by hand) is marked only because job 2 published it again
        assert marks == [[job1.id, job2.id]]
        assert all(r.published_at is not None for r in outbox_rows(engine, before))
        all_published_once_in_order(ctx.redis, ctx.relay.config.keys)
    finally:
        ctx.close()


def test_an_apply_failing_after_an_earlier_shard_published_still_marks_that_shards_events(
        any_engine, any_settings, simulator, monkeypatch):
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 60.0)
    with job_of_two_shards(any_engine, any_settings, simulator) as (ctx, before, shards):
        guard_marks(monkeypatch, ctx)
        real = jobs.apply_observations
        passed: list[list[int]] = []

        def apply(*args, published=(), **kwargs):
            passed.append(list(published))
            if len(passed) == 2:
                _db_down()
            return real(*args, published=published, **kwargs)

        monkeypatch.setattr(jobs, "apply_observations", apply)
        with pytest.raises(OperationalError):
            jobs.run_shards(ctx, shards)
        rows = outbox_rows(any_engine, before)
        assert len(rows) == 1 and passed == [[], [rows[0].id]]
        assert rows[0].published_at is not None        # marked at the job's end
        assert stream_ids(ctx.redis, ctx.relay.config.keys) == [rows[0].id]


def test_the_sweeper_running_between_every_step_repeats_nothing(
        any_engine, any_settings, simulator, monkeypatch):
    """The dispatcher's sweep (age 0) runs before and after every apply and publish of a
    two-shard job, marking rows the job has published and not yet marked."""
    monkeypatch.setattr("workers.unmarked.MARK_WITHIN", 60.0)
    with contextlib.closing(build_context(any_settings, process_metrics())) as sweeper, \
            job_of_two_shards(any_engine, any_settings, simulator) as (ctx, before, shards):
        guard_marks(monkeypatch, ctx)
        real_apply, real_publish = jobs.apply_observations, jobs._publish

        def apply(*args, **kwargs):
            sweeper.relay.sweep(older_than=0)
            report = real_apply(*args, **kwargs)
            sweeper.relay.sweep(older_than=0)
            return report

        def publish(c, rows, unmarked):
            real_publish(c, rows, unmarked)
            sweeper.relay.sweep(older_than=0)

        monkeypatch.setattr(jobs, "apply_observations", apply)
        monkeypatch.setattr(jobs, "_publish", publish)
        jobs.run_shards(ctx, shards)
        rows = outbox_rows(any_engine, before)
        assert len(rows) == 2 and all(r.published_at is not None for r in rows)
        assert stream_ids(ctx.redis, ctx.relay.config.keys) == [r.id for r in rows]


def test_unmarked_events_forget_only_what_an_apply_marked():
    """An id published again after an apply took its copy stays to be marked."""
    events = UnmarkedEvents(relay=None)  # type: ignore[arg-type]
    events.ids = [1, 2, 3]
    marks = list(events.ids)
    events.ids.extend([4, 2])   # published meanwhile (2 again: another worker's row)
    events.marked(marks)
    assert events.ids == [4]
