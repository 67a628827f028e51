"""Replay from a user's history in Redis, and an honest answer to "is nothing missing?".

The relay keeps, per user, a bounded sorted set of recent events (score = outbox id, member =
the event's exact bytes), a floor (the highest id no longer replayable) and the highest id ever
published. One MULTI reads all of them at once, together with the event stream's last entry
id, so the answer, the replay and the point where live events take over are consistent with
each other even while the relay publishes and trims (its Lua script is atomic too): every
stream entry up to ``stream_end`` is either in the replay, already seen by the client, or
covered by ``recovered: false``; every later entry is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from paxyo.events import event_id, parse_event_id
from paxyo.keys import Keys


@dataclass(frozen=True, slots=True)
class Replay:
    """What a (re)connecting client is told and sent before live events."""

    recovered: bool  # every event after the client's last_id is in ``events`` or will follow
    last_id: str | None  # the latest event id published for this user, if any
    stream_end: str = "0-0"  # the event stream's last entry when the history was read
    events: list[tuple[int, bytes]] = field(default_factory=list)  # (outbox id, exact bytes)

    @property
    def replayed_ids(self) -> frozenset[int]:
        return frozenset(outbox_id for outbox_id, _ in self.events)


async def read_replay(client: aioredis.Redis, keys: Keys, user_id: int,
                      last_id: str | None) -> Replay:
    """The user's events after ``last_id`` and whether they are all of them.

    Not recovered (and nothing replayed) when no ``last_id`` was given, it is not one of our
    ids, it is older than the history's floor, or newer than anything published for the user
    (then Redis has forgotten what the client saw). The client reloads its state over HTTP.
    """
    after = parse_event_id(last_id) if last_id else None
    history = keys.history(user_id)
    pipe = client.pipeline(transaction=True)
    pipe.hget(keys.history_floor, str(user_id))
    pipe.hget(keys.history_last, str(user_id))
    pipe.exists(history)
    pipe.xrevrange(keys.events, count=1)
    if after is not None:
        pipe.zrangebyscore(history, f"({after}", "+inf", withscores=True)
    floor_raw, last_raw, exists, end, *ranges = await pipe.execute()
    stream_end = end[0][0].decode() if end else "0-0"
    floor = int(floor_raw or 0)
    last = int(last_raw or 0)
    if not exists:  # the whole history expired: everything published so far is gone
        floor = max(floor, last)
    latest = event_id(last) if last else None
    if after is None or not floor <= after <= last:
        return Replay(recovered=False, last_id=latest, stream_end=stream_end)
    events = [(int(score), member) for member, score in ranges[0]]
    return Replay(recovered=True, last_id=latest, stream_end=stream_end, events=events)
