"""The seed's refund rule, made exact.

Canceled refunds the full charge. Partial refunds ``charge * r / quantity`` with
``r = min(max(remains, 0), quantity)``, rounded down to the money precision. Any other
status refunds nothing. The refund of an order is a *target* for its total refunded: a later
refundable status only tops up the difference, and nothing ever goes above the charge.
"""

from __future__ import annotations

from decimal import Decimal

from paxyo.money import ZERO, round_down
from paxyo.statuses import StatusClass


class RefundNotComputable(ValueError):
    """A Partial status without a usable remains figure: no refund can be computed."""


def refund_target(
    cls: StatusClass, charge: Decimal, quantity: int, remains: int | None, decimals: int
) -> Decimal:
    """Total amount that should have been refunded for an order in status ``cls``."""
    if cls is StatusClass.CANCELED:
        return charge
    if cls is StatusClass.PARTIAL:
        if remains is None:
            raise RefundNotComputable("partial status without numeric remains")
        r = min(max(remains, 0), quantity)
        return min(charge, round_down(charge * r / quantity, decimals))
    return ZERO


def refund_top_up(target: Decimal, already_refunded: Decimal, charge: Decimal) -> Decimal:
    """What to credit now so the order's refunded total reaches ``target`` (never negative)."""
    ceiling = min(target, charge)
    return max(ZERO, ceiling - already_refunded)
