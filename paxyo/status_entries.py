"""What a provider said about one order: a usable status, or why there is none.

Provider replies (see providers.replies) are turned into these values, which the apply step
(paxyo.observations) works on: the core never needs to know the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EntryErrorKind = Literal["entry_error", "bad_entry"]


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """One usable per-order status, as the provider reported it."""

    status: str  # stripped, otherwise verbatim: "In progress", "cancelled", "Fail"
    remains: int | None  # None when not an integer ("Unknown", "", null); never clamped here
    charge: str | None  # provider's charge in the provider's currency; informational only
    currency: str | None


@dataclass(frozen=True, slots=True)
class EntryError:
    """A per-order entry that carries no status.

    ``kind`` is ``"entry_error"`` when the provider said so (``{"error": ...}`` or a plain
    string) and ``"bad_entry"`` when the entry has an unusable shape.
    """

    reason: str
    kind: EntryErrorKind = "entry_error"


StatusMap = dict[str, StatusEntry | EntryError]  # by provider order id
