"""Decimal money: parsing, rounding down to the configured precision, JSON strings."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, InvalidOperation

ZERO = Decimal(0)


class MoneyError(ValueError):
    """A value that is not an acceptable amount of money."""


def quantum(decimals: int) -> Decimal:
    """The smallest money step, e.g. Decimal('0.01') for 2 decimals."""
    return Decimal(1).scaleb(-decimals)


def parse_money(value: object, decimals: int, *, allow_zero: bool = False) -> Decimal:
    """Parse a client-supplied amount: a decimal string or an int, never a float.

    Rejects more decimals than the money precision instead of silently rounding.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MoneyError("amount must be a decimal string such as \"25.00\"")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise MoneyError(f"amount {value!r} is not a decimal number") from None
    if not amount.is_finite() or amount.adjusted() > 15:
        raise MoneyError(f"amount {value!r} is not a finite number below 10^15")
    if amount != amount.quantize(quantum(decimals), rounding=ROUND_DOWN):
        raise MoneyError(f"amount {value!r} has more than {decimals} decimals")
    if amount < 0 or (amount == 0 and not allow_zero):
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
