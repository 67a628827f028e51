"""Webhook signatures: what the sender signs, a receiver verifies, and nothing else."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from paxyo.webhook_signature import sign, verify

BODY = b'{"type":"order.updated","id":"0000000000000042","refund":"7.00"}'
SECRET = "whsec-test"
AT = 1_795_938_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{AT}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, AT) == f"t={AT},v1={expected}"


def test_verify_accepts_its_own_signature_and_a_rotated_pair() -> None:
    header = sign(SECRET, BODY, AT)
    assert verify(SECRET, BODY, header, now=AT + 299)
    other = sign("old-secret", BODY, AT).split(",")[1]
    assert verify(SECRET, BODY, f"{other}, {header}", now=AT)


@pytest.mark.parametrize("body, header, secret, now", [
    (BODY + b" ", sign(SECRET, BODY, AT), SECRET, AT),             # tampered body
    (BODY, sign(SECRET, BODY, AT), "wrong", AT),                   # wrong secret
    (BODY, sign(SECRET, BODY, AT), SECRET, AT + 301),              # too old
    (BODY, sign(SECRET, BODY, AT), SECRET, AT - 301),              # from the future
    (BODY, sign(SECRET, BODY, AT).replace("t=", "t=٣"), SECRET, AT),  # non-ASCII digit
    (BODY, sign(SECRET, BODY, AT).split(",")[1], SECRET, AT),      # no timestamp
    (BODY, f"t={AT}", SECRET, AT),                                 # no signature
    (BODY, "", SECRET, AT),
    (BODY, f"t={AT},v1=\x00", SECRET, AT),
    (BODY, f"t={10**30},v1=00", SECRET, AT),
])
def test_verify_refuses(body: bytes, header: str, secret: str, now: float) -> None:
    assert not verify(secret, body, header, now=now)
