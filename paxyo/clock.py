"""Time as the store keeps it: naive UTC datetimes (SQLite has no time zones)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso_z(moment: datetime) -> str:
    """``2025-12-14T19:15:02Z``: the event timestamp format of the WebSocket protocol."""
    return moment.replace(microsecond=0).isoformat() + "Z"


def epoch_ms(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)
