from decimal import Decimal

import pytest

from paxyo.money import MoneyError, format_money, parse_money, round_down, to_money


def test_parse_accepts_strings_and_ints_only():
    assert parse_money("25.00", 2) == Decimal("25.00")
    assert parse_money("7", 2) == Decimal("7.00")
    assert parse_money(3, 2) == Decimal("3.00")
    for bad in (2.5, True, None, [], "abc", "NaN", "Infinity", "1e400000"):
        with pytest.raises(MoneyError):
            parse_money(bad, 2)


def test_parse_rejects_extra_decimals_and_non_positive():
    with pytest.raises(MoneyError, match="more than 2 decimals"):
        parse_money("1.005", 2)
    with pytest.raises(MoneyError, match="positive"):
        parse_money("0", 2)
    with pytest.raises(MoneyError, match="positive"):
        parse_money("-1.00", 2)
    assert parse_money("0", 2, allow_zero=True) == Decimal("0.00")
    assert parse_money("1.005", 3) == Decimal("1.005")


def test_round_down_and_format():
    assert round_down(Decimal("6.999"), 2) == Decimal("6.99")
    assert format_money(Decimal("7"), 2) == "7.00"
    assert format_money(Decimal("7.12345678"), 4) == "7.1234"
    assert to_money("10.00000000", 2) == Decimal("10.00")
    assert str(to_money(Decimal("10.00000000"), 2)) == "10.00"


@pytest.mark.parametrize("bad", [
    "\u0663", "\uff15", "\u0661\u0660\u0660.\u0660\u0660", "1_000", "1E2", "1e-2", "+5", " 5",
    "5 ", "\t5", "5\n", "5.", ".5", "1..0", "1.0.0", "0x10", "Infinity", "sNaN", "-0", "",
    "1" * 41, "10000000000", "10000000000.00", 10**10, -1,
])
def test_parse_accepts_only_ascii_decimals_below_the_limit(bad: object) -> None:
    with pytest.raises(MoneyError):
        parse_money(bad, 2)


def test_parse_accepts_up_to_the_limit() -> None:
    assert parse_money("9999999999.99", 2) == Decimal("9999999999.99")
    assert parse_money(9999999999, 2) == Decimal("9999999999.00")
    assert parse_money("0007.50", 2) == Decimal("7.50")
