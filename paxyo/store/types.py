"""Column types that keep values exact on every backend."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Numeric, String
from sqlalchemy.dialects.mysql import VARBINARY
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

MONEY_SCALE = 8  # decimals kept in the store: covers any PAXYO_MONEY_DECIMALS up to 8


class Money(TypeDecorator[Decimal]):
    """Exact money: NUMERIC(24, 8) on PostgreSQL and MySQL, integer units of 10^-8 on SQLite.

    SQLite has no exact decimal type: a NUMERIC column stores a fraction as an 8-byte float
    (116148470.32 reads back as 116148470.31999999). Its 64-bit integers are exact, and so are
    its SUM and comparisons over them, so SQLite keeps money as a count of 10^-8 units; that
    bounds amounts to 9.2e10, above ``paxyo.limits.MONEY_LIMIT``. A value with more than eight
    decimals is refused, never rounded.
    """

    impl = Numeric(24, MONEY_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(24, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return to_units(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_units(value)
        return value if isinstance(value, Decimal) else Decimal(str(value))


def to_units(amount: Decimal) -> int:
    """``amount`` as a whole number of 10^-8 units; refuses a finer amount."""
    units = amount.scaleb(MONEY_SCALE)
    if units != units.to_integral_value():
        raise ValueError(f"{amount} has more than {MONEY_SCALE} decimals")
    return int(units)


def from_units(units: int) -> Decimal:
    return Decimal(int(units)).scaleb(-MONEY_SCALE)


class ExactString(TypeDecorator[str]):
    """A string compared byte for byte on every backend: VARBINARY on MySQL and MariaDB.

    Their default collations call "abc", "ABC", "ábc" and "abc " the same string, which
    would make two different idempotency keys one (and drop a deposit).
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(VARBINARY(self.length * 4))  # utf-8: ≤4 bytes each
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name not in ("mysql", "mariadb"):
            return value
        return value.encode()

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode()
        return value
