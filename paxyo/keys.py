"""Every Redis key of Paxyo Realtime, in one place. All start with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "paxyo"

    @property
    def events(self) -> str:
        """The global event stream every gateway reads."""
        return f"{self.prefix}:events"

    def history(self, user_id: int) -> str:
        """Per-user recent events (sorted set: score = outbox id, member = event bytes)."""
        return f"{self.prefix}:hist:{user_id}"

    def history_times(self, user_id: int) -> str:
        """Per-user event ages (sorted set: score = created ms, member = outbox id)."""
        return f"{self.prefix}:hist:{user_id}:t"

    @property
    def history_floor(self) -> str:
        """Hash user id -> highest outbox id trimmed from that user's history."""
        return f"{self.prefix}:hist:floor"

    @property
    def history_last(self) -> str:
        """Hash user id -> highest outbox id ever published for that user."""
        return f"{self.prefix}:hist:last"

    @property
    def dispatcher_lock(self) -> str:
        return f"{self.prefix}:dispatcher:leader"

    @property
    def dispatcher_fence(self) -> str:
        return f"{self.prefix}:dispatcher:fence"

    @property
    def dispatcher_heartbeat(self) -> str:
        return f"{self.prefix}:dispatcher:heartbeat"

    def rate_limit(self, provider: str, window: int) -> str:
        return f"{self.prefix}:rate:{provider}:{window}"

    def circuit(self, provider: str) -> str:
        return f"{self.prefix}:circuit:{provider}"

    @property
    def gateways(self) -> str:
        """Sorted set of live gateway ids scored by last heartbeat."""
        return f"{self.prefix}:gateways"

    @property
    def metrics(self) -> str:
        """Hash of pushed metric snapshots from processes that serve no HTTP."""
        return f"{self.prefix}:metrics"
