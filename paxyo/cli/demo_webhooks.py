"""The demo's webhook receiver: what a panel's own server would do with Paxyo's deliveries.

``paxyo demo`` points the sender (``paxyo webhooks run``) at ``POST /demo/webhook`` on its own
gateway (PAXYO_WEBHOOK_URL) with a random PAXYO_WEBHOOK_SECRET, which the gateway reads too.
The inbox verifies each delivery, keeps the last few in memory (one gateway, one process: the
demo's) and the page shows them.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import orjson

from paxyo.webhook_signature import verify

KEEP = 50  # deliveries the inbox remembers; older ones are forgotten
SHOWN_FIELDS = ("type", "user_id", "order_id", "status", "previous_status", "remains",
                "quantity", "refund", "balance", "at")


class RefusedDelivery(ValueError):
    """The delivery is not signed with the secret, or is not an event; ``str()`` says why."""


class WebhookInbox:
    """Verified deliveries, newest last, at most ``keep``; a repeated event id is counted, not
    kept twice (delivery is at least once)."""

    def __init__(self, secret: str | None, keep: int = KEEP) -> None:
        self.secret = secret
        self.keep = keep
        self.deliveries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.received = 0
        self.refused = 0

    def receive(self, body: bytes, signature: str, event_id: str, *, now: float) -> dict:
        """Verify and keep one delivery; RefusedDelivery when it must be answered 400."""
        try:
            event = self._verified(body, signature, event_id, now)
        except RefusedDelivery:
            self.refused += 1
            raise
        self.received += 1
        kept = self.deliveries.get(event["id"])
        if kept is not None:
            kept["deliveries"] += 1
            return kept
        kept = {"event_id": event["id"], **{k: event.get(k) for k in SHOWN_FIELDS},
                "signed_at": _iso(_signed_at(signature)), "received_at": _iso(now),
                "deliveries": 1}
        self.deliveries[event["id"]] = kept
        while len(self.deliveries) > self.keep:
            self.deliveries.popitem(last=False)
        return kept

    def view(self) -> dict[str, Any]:
        """What ``GET /demo/webhooks`` answers: newest first, with the counters."""
        return {"deliveries": list(reversed(self.deliveries.values())),
                "received": self.received, "refused": self.refused}

    def _verified(self, body: bytes, signature: str, event_id: str,
                  now: float) -> dict[str, Any]:
        if not self.secret:
            raise RefusedDelivery("this gateway has no webhook secret (PAXYO_WEBHOOK_SECRET)")
        if not signature:
            raise RefusedDelivery("Paxyo-Signature: missing")
        if not verify(self.secret, body, signature, now=now):
            raise RefusedDelivery("Paxyo-Signature: does not sign this body with the demo's "
                                  "secret, or its time is more than 300 s from now")
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RefusedDelivery("body is not JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
                or not isinstance(event.get("type"), str):
            raise RefusedDelivery("body is not an event (an object with id and type strings)")
        if event_id and event_id != event["id"]:
            raise RefusedDelivery("Paxyo-Event-Id: differs from the body's id")
        return event


def _signed_at(signature: str) -> float | None:
    for part in signature.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            return float(value)
    return None


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
