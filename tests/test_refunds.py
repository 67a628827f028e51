from decimal import Decimal

import pytest

from paxyo.refunds import RefundNotComputable, refund_target, refund_top_up
from paxyo.statuses import StatusClass

D = Decimal


def target(cls, remains, charge="10.00", quantity=1000):
    return refund_target(cls, D(charge), quantity, remains, 2)


def test_the_seed_examples():
    assert target(StatusClass.PARTIAL, 700) == D("7.00")  # 300 of 1000 delivered
    assert target(StatusClass.CANCELED, None) == D("10.00")
    assert target(StatusClass.COMPLETED, 0) == D("0")
    assert target(StatusClass.OPEN, 1000) == D("0")
    assert target(StatusClass.UNKNOWN, 1000) == D("0")


def test_partial_clamps_and_rounds_down():
    assert target(StatusClass.PARTIAL, -5) == D("0.00")        # over-delivery
    assert target(StatusClass.PARTIAL, 5000) == D("10.00")     # remains > quantity
    assert target(StatusClass.PARTIAL, 1, "1.00", 3) == D("0.33")
    assert target(StatusClass.PARTIAL, 2, "1.00", 3) == D("0.66")  # 0.666.. rounds down
    assert target(StatusClass.PARTIAL, 157, "0.27", 1000) == D("0.04")


def test_partial_without_remains_is_not_computable():
    with pytest.raises(RefundNotComputable):
        target(StatusClass.PARTIAL, None)


def test_top_up_only_and_never_above_charge():
    assert refund_top_up(D("7.00"), D("0"), D("10.00")) == D("7.00")
    assert refund_top_up(D("10.00"), D("7.00"), D("10.00")) == D("3.00")
    assert refund_top_up(D("5.00"), D("7.00"), D("10.00")) == D("0")
    assert refund_top_up(D("12.00"), D("0"), D("10.00")) == D("10.00")
