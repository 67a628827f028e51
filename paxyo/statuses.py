"""Provider status normalisation.

Providers spell statuses many ways ("In progress", "inprogress", "Cancelled", "complete").
Each is matched case-, space- and underscore-insensitively and mapped to a class; anything
unrecognised is UNKNOWN and must never lead to a refund.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass


class StatusClass(enum.StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    PARTIAL = "partial"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (StatusClass.COMPLETED, StatusClass.PARTIAL, StatusClass.CANCELED)


@dataclass(frozen=True, slots=True)
class Status:
    """A normalised status: its class and the display name stored on the order."""

    cls: StatusClass
    name: str


_KNOWN: dict[str, Status] = {
    "pending": Status(StatusClass.OPEN, "Pending"),
    "processing": Status(StatusClass.OPEN, "Processing"),
    "inprogress": Status(StatusClass.OPEN, "In progress"),
    "awaiting": Status(StatusClass.OPEN, "Awaiting"),
    "active": Status(StatusClass.OPEN, "Active"),
    "completed": Status(StatusClass.COMPLETED, "Completed"),
    "complete": Status(StatusClass.COMPLETED, "Completed"),
    "partial": Status(StatusClass.PARTIAL, "Partial"),
    "canceled": Status(StatusClass.CANCELED, "Canceled"),
    "cancelled": Status(StatusClass.CANCELED, "Canceled"),
    "refunded": Status(StatusClass.CANCELED, "Canceled"),
}

PENDING = _KNOWN["pending"]


@functools.lru_cache(maxsize=512)  # a provider repeats a handful of spellings
def normalise_status(raw: str) -> Status:
    """Map a provider status string to its class; unknown words keep their raw text."""
    key = "".join(raw.split()).replace("_", "").replace("-", "").lower()
    known = _KNOWN.get(key)
    if known is not None:
        return known
    return Status(StatusClass.UNKNOWN, _printable(raw.strip())[:64])


def _printable(text: str) -> str:
    """Control characters (NUL included, which PostgreSQL text refuses) shown as "?"."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
