"""The documented bounds of every value a user or a provider controls.

Each is checked where the value enters (the HTTP API, a provider reply) so that nothing the
store cannot hold ever reaches SQL, and so that one bad value is refused on its own.
"""

from __future__ import annotations

import re
from decimal import Decimal

# Amounts and balances stay below ten billion currency units on every store: SQLite keeps
# money as 64-bit integer units of 10^-8 (see paxyo.store.types), which tops out at 9.2e10.
MONEY_LIMIT = Decimal(10) ** 10

MAX_ID = 2**63 - 1              # order and user ids: BIGINT, 1..MAX_ID
MAX_QUANTITY = 10**9            # an order's quantity, 1..MAX_QUANTITY
# A provider's remains outside this range is no number we can use (the column is BIGINT).
MAX_REMAINS = 10**15

PROVIDER_ORDER_ID_MAX = 64

# Text fields of the /v1 API, in characters.
MAX_REFERENCE = 150             # a deposit's reference
MAX_SERVICE = 64                # an order's service (column String(64))
MAX_LINK = 4096                 # an order's link
_PROVIDER_ORDER_ID = re.compile(rf"[A-Za-z0-9]{{1,{PROVIDER_ORDER_ID_MAX}}}", re.ASCII)


def is_provider_order_id(value: str) -> bool:
    """One provider order id: 1-64 ASCII letters or digits (no comma, space or control)."""
    return _PROVIDER_ORDER_ID.fullmatch(value) is not None
