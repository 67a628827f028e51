"""Decimal money: parsing, rounding down to the configured precision, JSON strings."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal

from paxyo.limits import MONEY_LIMIT

ZERO = Decimal(0)

# ASCII digits with at most one dot between digits: no sign, exponent, underscore, space or
# other script's digits, all of which Decimal() would accept. 40 characters is far more than
# any amount below MONEY_LIMIT needs and keeps Decimal's work bounded.
_AMOUNT = re.compile(r"[0-9]{1,40}(?:\.[0-9]{1,40})?", re.ASCII)


class MoneyError(ValueError):
    """A value that is not an acceptable amount of money."""


def quantum(decimals: int) -> Decimal:
    """The smallest money step, e.g. Decimal('0.01') for 2 decimals."""
    return Decimal(1).scaleb(-decimals)


def parse_money(value: object, decimals: int, *, allow_zero: bool = False) -> Decimal:
    """Parse a client-supplied amount: an ASCII decimal string or an int, never a float.

    Refuses more decimals than the money precision instead of silently rounding, and any
    amount at or above :data:`paxyo.limits.MONEY_LIMIT`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MoneyError("amount must be a decimal string such as \"25.00\"")
    if isinstance(value, int):
        if value < 0 or (value == 0 and not allow_zero):
            raise MoneyError(f"amount {value!r} must be positive")
        if value >= MONEY_LIMIT:
            raise MoneyError(f"amount {value!r} is too large: it must be below {MONEY_LIMIT}")
        return Decimal(value).quantize(quantum(decimals))
    if value[:1] in ("-", "+"):
        raise MoneyError(f"amount {value[:50]!r} must be positive, written without a sign")
    if _AMOUNT.fullmatch(value) is None:
        shown = value if len(value) <= 50 else value[:50] + "..."
        raise MoneyError(f"amount {shown!r} is not a finite decimal number: ASCII digits and at "
                         "most one dot, such as \"25.00\"")
    amount = Decimal(value)
    if amount >= MONEY_LIMIT:
        raise MoneyError(f"amount {value!r} is too large: it must be below {MONEY_LIMIT}")
    if amount != amount.quantize(quantum(decimals), rounding=ROUND_DOWN):
        raise MoneyError(f"amount {value!r} has more than {decimals} decimals")
    if amount == 0 and not allow_zero:
        raise MoneyError(f"amount {value!r} must be positive")
    return amount.quantize(quantum(decimals))


def round_down(amount: Decimal, decimals: int) -> Decimal:
    """Round toward zero to the money precision (refunds never round up)."""
    return amount.quantize(quantum(decimals), rounding=ROUND_DOWN)


def format_money(amount: Decimal, decimals: int) -> str:
    """The JSON form: a string with exactly ``decimals`` decimals."""
    return str(amount.quantize(quantum(decimals), rounding=ROUND_DOWN))


def to_money(value: object, decimals: int) -> Decimal:
    """A stored NUMERIC (which may carry extra zeros) at the money precision."""
    return Decimal(str(value)).quantize(quantum(decimals), rounding=ROUND_DOWN)
