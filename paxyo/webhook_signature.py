"""Webhook signatures: ``Paxyo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">``.

The timestamp is signed with the body so that a captured delivery cannot be replayed later: a
receiver refuses a ``t`` too far from its own clock.
"""

from __future__ import annotations

import hashlib
import hmac

DEFAULT_TOLERANCE = 300  # seconds; what the PHP kit's Webhook::verify accepts by default


def signature_hex(secret: str, body: bytes, at: int) -> str:
    return hmac.new(secret.encode(), str(at).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: int) -> str:
    """The ``Paxyo-Signature`` header value for ``body`` sent at unix time ``at``."""
    return f"t={at},v1={signature_hex(secret, body, at)}"


def verify(secret: str, body: bytes, header: str, *, now: float,
           tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` of now.

    Several ``v1=`` values may be given (any one matching is enough), as when a secret is
    being rotated.
    """
    at: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            at = int(value)
        elif key == "v1" and value.isascii():
            candidates.append(value.lower())
    if at is None or abs(now - at) > tolerance:
        return False
    expected = signature_hex(secret, body, at)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
