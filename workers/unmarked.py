"""A job's events that Redis holds and the database does not yet mark as published.

Marking a shard's events in a write transaction of their own cost one transaction per shard
(on SQLite every worker waits for the same write lock; on PostgreSQL it is a commit). Instead
the job's next apply marks them in its own transaction. Whatever is still unmarked shortly
after its publish (the job's other shards wait for a slow provider) or at the job's end is
marked in a transaction of its own, well before the dispatcher's sweep would publish it again
(rows left unpublished for 2 s). Until it is marked, another worker publishing a later event
of the same user publishes it again first, which the relay's script recognises.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError

from paxyo.relay import OutboxRelay

log = logging.getLogger("paxyo.workers")

MARK_WITHIN = 0.5  # seconds from a publish to its mark when no apply has taken it


class UnmarkedEvents:
    """Outbox ids published by one job and not yet marked published (one event loop)."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self.ids: list[int] = []
        self._timer: asyncio.TimerHandle | None = None

    def published(self, ids: list[int]) -> None:
        """These are in Redis now: mark them in the job's next apply, or in a transaction of
        their own within MARK_WITHIN (called on the job's event loop)."""
        self.ids.extend(ids)
        if self.ids and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(MARK_WITHIN, self.flush)

    def marked(self, ids: list[int]) -> None:
        """An apply's transaction, now committed, marked ``ids`` (a copy of :attr:`ids`)."""
        done = set(ids)
        self.ids = [i for i in self.ids if i not in done]

    def flush(self) -> None:
        """Mark what is left, in a transaction of its own (the timer, and the job's end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ids:
            return
        ids, self.ids = self.ids, []
        try:
            self.relay.mark_published(ids)
        except SQLAlchemyError as exc:  # they are in Redis: a repeat by the sweeper is harmless
            log.warning("%d published events not marked (the sweeper repeats them): %s",
                        len(ids), exc)
