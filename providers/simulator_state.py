"""In-memory state of the provider simulator: orders, their lifecycle, faults and counters.

No I/O here; :mod:`providers.simulator` serves this state over HTTP.

An order stores only its creation time, service and quantity. Its schedule (how long it stays
Pending, then In progress, and how it ends) is derived on demand from a keyed hash of the seed
and the order id, so 100,000 orders cost a few tens of MB and no background task. Orders set
through the control API carry an :class:`Override` and stop moving on their own; an order
given a :class:`Schedule` through it follows that one instead (the demo's slow orders).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

FIRST_ORDER_ID = 1000
MAX_IDS_PER_REQUEST = 100
CONTROL_DEFAULT_QUANTITY = 1000
STARTING_BALANCE = Decimal("1000000.00000")
CURRENCY = "USD"
PENDING_SECONDS = (1.0, 5.0)
RUNNING_SECONDS = (3.0, 20.0)
OPEN_STATUSES = frozenset({"Pending", "In progress", "Processing"})
FINAL_STATUSES = ("Completed", "Partial", "Canceled")
MAX_SCHEDULE_SECONDS = 7 * 86400
SCHEDULE_STEPS = 10  # a scheduled order is delivered in this many equal steps
MONEY_PLACES = Decimal("0.00001")
# Per-order faults of multi-status replies (``"reply"`` of POST /sim/orders/{id}): leave the id
# out, add ids that were not asked for, or write the id's key twice (broken PHP panels that
# build JSON by string concatenation do all three).
REPLY_FAULTS = ("omit", "extra", "repeat")
EXTRA_IDS = 2  # ids added per "extra" fault: one unknown id, one known order not asked for

INCORRECT_ORDER = {"error": "Incorrect order ID"}


@dataclass(frozen=True, slots=True)
class Service:
    id: int
    name: str
    category: str
    rate: Decimal  # per 1000
    min: int
    max: int
    refill: bool
    cancel: bool

    def as_reply(self) -> dict[str, Any]:
        """The Perfect Panel shape: int id, string rate/min/max, bool refill/cancel."""
        return {
            "service": self.id, "name": self.name, "type": "Default",
            "category": self.category, "rate": str(self.rate), "min": str(self.min),
            "max": str(self.max), "refill": self.refill, "cancel": self.cancel,
        }


SERVICES = {
    service.id: service
    for service in (
        Service(1, "Instagram Followers", "Instagram", Decimal("0.90"), 50, 100000, True, True),
        Service(2, "Instagram Likes", "Instagram", Decimal("0.12"), 10, 50000, False, True),
        Service(3, "YouTube Views", "YouTube", Decimal("1.50"), 100, 1000000, True, False),
        Service(4, "Telegram Members", "Telegram", Decimal("2.10"), 100, 20000, False, True),
    )
}
DEFAULT_SERVICE = 1


@dataclass(frozen=True, slots=True)
class Schedule:
    """A lifecycle set through the control API: Pending for ``pending`` seconds from ``start``,
    then In progress for ``running`` seconds while the remains fall in SCHEDULE_STEPS equal
    steps to ``remains``, then ``ends``."""

    start: float
    pending: float
    running: float
    ends: str
    remains: int

    def state(self, now: float, quantity: int) -> tuple[str, int]:
        age = now - self.start
        if age < self.pending:
            return "Pending", quantity
        if age < self.pending + self.running:
            done = int(SCHEDULE_STEPS * (age - self.pending) / self.running) / SCHEDULE_STEPS
            return "In progress", quantity - int((quantity - self.remains) * done)
        return self.ends, self.remains

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "running": self.running, "ends": self.ends,
                "remains": self.remains}


class SimOrder:
    """What is kept per order; everything else is derived."""

    __slots__ = ("created", "quantity", "schedule", "service")

    def __init__(self, created: float, quantity: int, service: int) -> None:
        self.created = created
        self.quantity = quantity
        self.service = service
        self.schedule: Schedule | None = None


_UNSET: Any = object()


class Override:
    """State set through the control API: a frozen status/remains, or a verbatim entry."""

    __slots__ = ("entry", "remains", "status")

    def __init__(self, status: str, remains: Any, entry: Any = _UNSET) -> None:
        self.status = status
        self.remains = remains
        self.entry = entry


@dataclass(slots=True)
class Faults:
    """Whole-request faults of /api/v2; see POST /sim/faults."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    html_rate: float = 0.0
    timeout_rate: float = 0.0
    rate_limit_per_min: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply the given keys only; ValueError names the first bad one."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(known)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            if name.endswith("_rate") and value > 1:
                raise ValueError(f"{name} must be between 0 and 1")
            if name == "rate_limit_per_min" and value != int(value):
                raise ValueError("rate_limit_per_min must be an integer")
        for name, value in changes.items():
            setattr(self, name, int(value) if name == "rate_limit_per_min" else float(value))

    def as_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SimulatorState:
    """Orders, faults and counters of one simulator process."""

    def __init__(
        self, key: str, seed: int = 0, *, auto_advance: bool = True,
        clock: Callable[[], float],
    ) -> None:
        self.key = key
        self.seed = seed
        self.auto_advance = auto_advance
        self.clock = clock
        self.orders: dict[str, SimOrder] = {}
        self.overrides: dict[str, Override] = {}
        self.reply_faults: dict[str, str] = {}
        self.next_id = FIRST_ORDER_ID
        self.balance = STARTING_BALANCE
        self.refills = 0
        self.faults = Faults()
        self.counters: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.max_ids_per_request = 0
        self.in_flight = 0      # /api/v2 requests being answered right now
        self.max_in_flight = 0  # the most at once since the stats were reset
        self._rng = random.Random(seed)
        self._hash_key = str(seed).encode()[:64]
        self._window_start = clock()
        self._window_count = 0

    # -- orders ---------------------------------------------------------------------------

    def add_order(self, service_id: str, link: str, quantity: str) -> dict[str, Any]:
        """The reply to ``action=add``: ``{"order": id}`` or ``{"error": ...}``."""
        service = SERVICES.get(_to_int(service_id) or 0)
        if service is None:
            return {"error": "Incorrect service ID"}
        if not link.strip():
            return {"error": "Bad link"}
        amount = _to_int(quantity)
        if amount is None:
            return {"error": "Incorrect request"}
        if amount < service.min:
            return {"error": f"Quantity less than minimal {service.min}"}
        if amount > service.max:
            return {"error": f"Quantity more than maximal {service.max}"}
        charge = _money(service.rate * amount / 1000)
        if charge > self.balance:
            return {"error": "Not enough funds on balance"}
        self.balance -= charge
        order_id = self.next_id
        self.orders[str(order_id)] = SimOrder(self.clock(), amount, service.id)
        self.next_id += 1
        return {"order": order_id}

    def set_order(self, order_id: str, changes: Mapping[str, Any]) -> None:
        """Control API: create the order if needed, then set status/remains, the entry or a
        schedule."""
        _check_order_changes(changes)
        order = self.orders.get(order_id)
        quantity = changes.get("quantity")
        schedule = None
        if "schedule" in changes:  # checked before anything changes
            final_quantity = quantity or (order.quantity if order else CONTROL_DEFAULT_QUANTITY)
            schedule = _schedule(changes["schedule"], self.clock(), final_quantity)
        if order is None:
            order = SimOrder(self.clock(), quantity or CONTROL_DEFAULT_QUANTITY, DEFAULT_SERVICE)
            self.orders[order_id] = order
            if order_id.isdigit() and int(order_id) >= self.next_id:
                self.next_id = int(order_id) + 1
        elif quantity is not None:
            order.quantity = quantity
        if "reply" in changes:
            self._set_reply_fault(order_id, changes["reply"])
        if schedule is not None:
            order.schedule = schedule
            self.overrides.pop(order_id, None)  # it moves on its own again, on this schedule
        elif "entry" in changes:
            status, remains = self._state(order_id, order)
            self.overrides[order_id] = Override(status, remains, changes["entry"])
        elif "status" in changes or "remains" in changes:
            status, remains = self._state(order_id, order)
            self.overrides[order_id] = Override(
                changes.get("status", status), changes.get("remains", remains)
            )

    def status_entry(self, order_id: str) -> Any:
        """The value served for one id: the status object, an override entry, or an error."""
        order = self.orders.get(order_id)
        if order is None:
            return INCORRECT_ORDER
        override = self.overrides.get(order_id)
        if override is not None and override.entry is not _UNSET:
            return override.entry
        status, remains = self._state(order_id, order)
        return {
            "charge": str(self._charge(order, status, remains)),
            "start_count": str(int(self._uniforms(order_id)[5] * 10000)),
            "status": status,
            "remains": _served_remains(remains),
            "currency": CURRENCY,
        }

    def status_pairs(self, order_ids: list[str]) -> list[tuple[str, Any]]:
        """The (key, entry) pairs of a multi-status reply, in order, with the per-order reply
        faults applied; a key may appear twice ("repeat"), so this is not a dict."""
        pairs: list[tuple[str, Any]] = []
        asked = set(order_ids)
        for order_id in order_ids:
            fault = self.reply_faults.get(order_id)
            if fault is not None:
                self.count_fault(f"reply_{fault}")
            if fault == "omit":
                continue
            entry = self.status_entry(order_id)
            pairs.append((order_id, entry))
            if fault == "repeat":
                pairs.append((order_id, entry))
            elif fault == "extra":
                pairs.extend((extra, self._decoy_entry(extra)) for extra in self._extra_ids(asked))
        return pairs

    def _set_reply_fault(self, order_id: str, fault: Any) -> None:
        if fault is None:
            self.reply_faults.pop(order_id, None)
        else:
            self.reply_faults[order_id] = fault

    def _extra_ids(self, asked: set[str]) -> list[str]:
        """Ids not asked for: one no order has, and one known order (if any) not asked for."""
        extras = [str(self.next_id + 10**9)]
        others = [order_id for order_id in self.orders if order_id not in asked]
        if others:
            extras.append(self._rng.choice(others))
        return extras[:EXTRA_IDS]

    def _decoy_entry(self, order_id: str) -> dict[str, Any]:
        """A Canceled entry: a client that applied an id it did not ask for would refund."""
        order = self.orders.get(order_id)
        quantity = order.quantity if order is not None else CONTROL_DEFAULT_QUANTITY
        return {"charge": "0", "start_count": "0", "status": "Canceled",
                "remains": str(quantity), "currency": CURRENCY}

    def describe(self, order_id: str) -> dict[str, Any] | None:
        """Control API view of one order, or None when unknown."""
        order = self.orders.get(order_id)
        if order is None:
            return None
        override = self.overrides.get(order_id)
        status, remains = self._state(order_id, order)
        view = {
            "id": order_id, "service": order.service, "quantity": order.quantity,
            "status": status, "remains": remains, "frozen": override is not None,
            "served": self.status_entry(order_id),
        }
        if order.schedule is not None:
            view["schedule"] = order.schedule.as_dict()
        if override is not None and override.entry is not _UNSET:
            view["entry"] = override.entry
        if order_id in self.reply_faults:
            view["reply"] = self.reply_faults[order_id]
        return view

    def cancel(self, order_id: str) -> Any:
        """The ``cancel`` value for one id: 1, or an error object."""
        order = self.orders.get(order_id)
        if order is None:
            return INCORRECT_ORDER
        if not SERVICES[order.service].cancel:
            return {"error": "Cancel is not available for this service"}
        status, remains = self._state(order_id, order)
        if status not in OPEN_STATUSES:
            return {"error": "Order can't be canceled"}
        final = "Canceled" if status == "Pending" else "Partial"
        self.overrides[order_id] = Override(final, remains)
        return 1

    def refill(self, order_id: str) -> Any:
        """A new refill id (int), or an error object."""
        order = self.orders.get(order_id)
        if order is None:
            return INCORRECT_ORDER
        if not SERVICES[order.service].refill:
            return {"error": "Refill is not available for this service"}
        if self._state(order_id, order)[0] != "Completed":
            return {"error": "Refill is available for completed orders only"}
        self.refills += 1
        return self.refills

    def refill_status(self, refill_id: str) -> Any:
        number = _to_int(refill_id)
        if number is None or not 1 <= number <= self.refills:
            return {"error": "Refill not found"}
        return "Completed"

    # -- lifecycle ------------------------------------------------------------------------

    def _state(self, order_id: str, order: SimOrder) -> tuple[str, Any]:
        override = self.overrides.get(order_id)
        if override is not None:
            return override.status, override.remains
        return self._scheduled_state(order_id, order)

    def _scheduled_state(self, order_id: str, order: SimOrder) -> tuple[str, int]:
        quantity = order.quantity
        if order.schedule is not None:
            return order.schedule.state(self.clock(), quantity)
        if not self.auto_advance:
            return "Pending", quantity
        u_wait, u_run, u_end, u_left, u_word, _ = self._uniforms(order_id)
        age = self.clock() - order.created
        pending_for = _between(PENDING_SECONDS, u_wait)
        if age < pending_for:
            return "Pending", quantity
        running_for = _between(RUNNING_SECONDS, u_run)
        if age < pending_for + running_for:
            delivered = int(quantity * (age - pending_for) / running_for)
            return ("Processing" if u_word < 0.2 else "In progress"), quantity - delivered
        if u_end < 0.7:
            return "Completed", 0
        if u_end < 0.9 and quantity > 1:
            return "Partial", 1 + int(u_left * (quantity - 1))
        return "Canceled", quantity

    def _uniforms(self, order_id: str) -> tuple[float, ...]:
        """Six numbers in [0, 1), fixed by the seed and the order id."""
        digest = hashlib.blake2b(order_id.encode(), digest_size=24, key=self._hash_key).digest()
        return tuple(int.from_bytes(digest[i : i + 4]) / 2**32 for i in range(0, 24, 4))

    def _charge(self, order: SimOrder, status: str, remains: Any) -> Decimal:
        full = SERVICES[order.service].rate * order.quantity / 1000
        if status == "Canceled":
            return _money(Decimal(0))
        if status == "Partial" and isinstance(remains, int) and 0 <= remains <= order.quantity:
            return _money(full * (order.quantity - remains) / order.quantity)
        return _money(full)

    # -- faults and counters --------------------------------------------------------------

    def count_request(self, action: str, params: Mapping[str, str]) -> None:
        self.counters["requests"] += 1
        self.actions[action or "(none)"] += 1
        if action == "status":
            ids = split_ids(params["orders"]) if "orders" in params else [params.get("order")]
            self.counters["status_requests"] += 1
            self.counters["orders_queried"] += len(ids)
            self.max_ids_per_request = max(self.max_ids_per_request, len(ids))

    def count_fault(self, kind: str) -> None:
        self.fault_counts[kind] += 1

    def rate_limited_for(self) -> float | None:
        """Seconds until the rate window reopens, when this request exceeds the limit."""
        limit = self.faults.rate_limit_per_min
        if limit <= 0:
            return None
        now = self.clock()
        if now - self._window_start >= 60:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._window_count <= limit:
            return None
        return 60 - (now - self._window_start)

    def draw_fault(self) -> str | None:
        """"error", "html", "timeout" or None, drawn from the seeded generator."""
        faults = self.faults
        draw = self._rng.random()
        for kind, rate in (
            ("error", faults.error_rate), ("html", faults.html_rate),
            ("timeout", faults.timeout_rate),
        ):
            if draw < rate:
                return kind
            draw -= rate
        return None

    def choice(self, options: tuple[Any, ...]) -> Any:
        return self._rng.choice(options)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.counters["requests"],
            "status_requests": self.counters["status_requests"],
            "orders_queried": self.counters["orders_queried"],
            "max_ids_per_request": self.max_ids_per_request,
            "max_in_flight": self.max_in_flight,
            "invalid_key": self.counters["invalid_key"],
            "orders": len(self.orders),
            "actions": dict(self.actions),
            "faults": dict(self.fault_counts),
            "balance": str(self.balance),
        }

    def reset_stats(self) -> None:
        self.counters.clear()
        self.actions.clear()
        self.fault_counts.clear()
        self.max_ids_per_request = 0
        self.max_in_flight = self.in_flight


def split_ids(text: str) -> list[str]:
    """Ids of an ``orders=`` list, stripped, empties dropped, duplicates removed."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _check_order_changes(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - {"status", "remains", "entry", "quantity", "reply", "schedule"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; "
                         "use status, remains, entry, quantity, reply, schedule")
    if "schedule" in changes and {"status", "remains", "entry"} & set(changes):
        raise ValueError("schedule cannot be combined with status, remains or entry")
    if "reply" in changes and changes["reply"] is not None \
            and changes["reply"] not in REPLY_FAULTS:
        raise ValueError(f"reply must be one of {list(REPLY_FAULTS)} or null")
    if "entry" in changes and ("status" in changes or "remains" in changes):
        raise ValueError("entry cannot be combined with status or remains")
    if "status" in changes and not isinstance(changes["status"], str):
        raise ValueError("status must be a string")
    quantity = changes.get("quantity")
    if quantity is not None and (
        isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1
    ):
        raise ValueError("quantity must be a positive integer")


def _schedule(spec: Any, now: float, quantity: int) -> Schedule:
    """A :class:`Schedule` starting now from its control-API form; ValueError names the
    first bad key."""
    if not isinstance(spec, dict):
        raise ValueError("schedule must be an object with pending, running, ends, remains")
    unknown = set(spec) - {"pending", "running", "ends", "remains"}
    if unknown:
        raise ValueError(f"schedule: unknown keys {sorted(unknown)}")
    seconds = {}
    for name in ("pending", "running"):
        value = spec.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value <= MAX_SCHEDULE_SECONDS:
            raise ValueError(f"schedule: {name} must be seconds from 0 to {MAX_SCHEDULE_SECONDS}")
        seconds[name] = float(value)
    ends = spec.get("ends")
    if ends not in FINAL_STATUSES:
        raise ValueError(f"schedule: ends must be one of {', '.join(FINAL_STATUSES)}")
    default = {"Completed": 0, "Canceled": quantity, "Partial": quantity // 2}[ends]
    remains = spec.get("remains", default)
    if isinstance(remains, bool) or not isinstance(remains, int) or not 0 <= remains <= quantity:
        raise ValueError(f"schedule: remains must be an integer from 0 to {quantity}")
    return Schedule(now, seconds["pending"], seconds["running"], ends, remains)


def _served_remains(remains: Any) -> Any:
    """Numbers as strings, the way panels serve them; anything else verbatim."""
    if isinstance(remains, int | float) and not isinstance(remains, bool):
        return str(remains)
    return remains


def _between(bounds: tuple[float, float], fraction: float) -> float:
    low, high = bounds
    return low + (high - low) * fraction


def _money(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY_PLACES)


def _to_int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None
