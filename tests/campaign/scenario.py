"""The seeded plan of one campaign run: who deposits what, which orders are placed, what the
provider serves for each of them and when, and which faults strike when. Pure: no I/O.

Times are seconds after the run's start (the first order placement). The fault phase lasts
``Plan.fault_seconds``; at its end the faults stop, every order that is still held open (an
unknown word, a bad entry, an omitted id, or simply a slow order) gets its real final status,
and the run waits for everything to settle.

Each order's expected outcome is fixed by the plan: the provider serves exactly one terminal
status (``OrderPlan.final``) until the system has recorded it; only then, for some orders, does
the simulator "regress" (Completed then Canceled, Partial with other remains, back to In
progress, an unknown word...). Terminal statuses are never changed, so the expectation is the
final status whatever the regression.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

OPEN_SPELLINGS = ("Pending", "pending", "In progress", "in progress", "inprogress",
                  "In_Progress", "IN PROGRESS", "Processing", "PROCESSING", "Awaiting", "Active")
TERMINAL_SPELLINGS = {
    "Completed": ("Completed", "completed", "Complete", "COMPLETE", " Completed "),
    "Partial": ("Partial", "partial", "PARTIAL", " Partial "),
    "Canceled": ("Canceled", "Cancelled", "canceled", "CANCELLED", "Refunded", "refunded"),
}
UNKNOWN_WORDS = ("Fail", "Error", "Rejected", "In review", "Unknown", "Suspended", "pendingg")
# Entries with no usable status: the order must stay open and move no money.
BAD_ENTRIES: tuple[Any, ...] = (
    "Incorrect order ID", {"error": "Incorrect order ID"}, {"charge": "1.00"}, {"status": ""},
    None, 42, [], {"status": 7}, {"status": "Partial", "remains": "abc"},
    {"status": "Partial", "remains": ""}, {"status": "Partial", "remains": "+5"},
    {"status": "Partial", "remains": None}, {"status": "Partial", "remains": "1e30"},
    {"status": "Partial", "remains": "12.5"},
)
REPLY_FAULTS = ("omit", "extra", "repeat")
QUANTITIES = (1, 2, 7, 10, 100, 250, 999, 1000, 3333, 10000)

PROCESS_KILLS = ("kill_worker", "kill_dispatcher", "kill_gateway")
REDIS_RESTARTS = ("redis_term", "redis_kill")
MONEY = Decimal("0.01")


@dataclass(frozen=True)
class Step:
    """At ``at``, POST ``body`` to the simulator's /sim/orders/{provider_order_id}."""

    at: float
    body: dict[str, Any]


@dataclass(frozen=True)
class Final:
    """The one terminal status the provider serves, and what the system must end with."""

    status: str             # the spelling served
    remains: Any            # the remains served (an int, or a string form of one)
    name: str               # its canonical name: Completed, Partial or Canceled
    parsed_remains: int     # the integer the served remains stands for
    at: float | None        # None: at the end of the fault phase

    @property
    def body(self) -> dict[str, Any]:
        return {"status": self.status, "remains": self.remains}


@dataclass(frozen=True)
class OrderPlan:
    id: int
    user_id: int
    provider_order_id: str
    quantity: int
    charge: Decimal
    placed_at: float
    steps: tuple[Step, ...]      # open progress, glitches and reply faults before the final
    final: Final
    regression: dict[str, Any] | None  # served once the system has recorded the final
    glitch: str | None           # "unknown", "bad_entry", "reply_omit", ... (for the counts)

    def expected_refund(self) -> Decimal:
        return refund_for(self.final.name, self.charge, self.quantity, self.final.parsed_remains)


@dataclass(frozen=True)
class Deposit:
    user_id: int
    amount: Decimal
    reference: str
    at: float
    repeats: int = 0  # the same reference sent again this many times (must change nothing)


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: int = 0             # which worker/gateway, which user's client
    down_for: float = 0.0       # how long a killed process or Redis stays down
    settings: dict[str, Any] = field(default_factory=dict)  # simulator fault rates


@dataclass(frozen=True)
class Plan:
    seed: int
    users: tuple[int, ...]
    deposits: tuple[Deposit, ...]
    orders: tuple[OrderPlan, ...]
    faults: tuple[Fault, ...]
    fault_seconds: float


def refund_for(name: str, charge: Decimal, quantity: int, remains: int) -> Decimal:
    """The refund rule, written here independently of paxyo.refunds."""
    if name == "Canceled":
        return charge
    if name == "Partial":
        r = min(max(remains, 0), quantity)
        return (charge * r / quantity).quantize(MONEY, rounding=ROUND_DOWN)
    return Decimal("0.00")


def make_plan(seed: int, *, database_faults: bool) -> Plan:
    """The whole run, drawn from ``seed``."""
    rng = random.Random(seed)
    fault_seconds = round(rng.uniform(9.0, 13.0), 2)
    users = tuple(1000 + 37 * i + rng.randrange(30) for i in range(rng.randint(2, 4)))
    orders = tuple(_order(rng, n, users, fault_seconds) for n in range(rng.randint(10, 40)))
    deposits = _deposits(rng, users, orders, fault_seconds)
    faults = _faults(rng, users, fault_seconds, database_faults)
    return Plan(seed, users, deposits, orders, faults, fault_seconds)


def _order(rng: random.Random, n: int, users: tuple[int, ...], fault_seconds: float) -> OrderPlan:
    quantity = rng.choice(QUANTITIES)
    placed_at = round(rng.uniform(0.0, 2.0), 2)
    glitch = rng.choices((None, "unknown", "bad_entry", "reply"), (50, 15, 15, 20))[0]
    slow = glitch is None and rng.random() < 0.2
    final = _final(rng, quantity, fault_seconds, placed_at,
                   held=slow or glitch in ("unknown", "bad_entry"))
    steps: list[Step] = []
    end = final.at if final.at is not None else fault_seconds
    for remains in sorted(rng.sample(range(quantity + 1), min(quantity + 1, rng.randint(0, 3))),
                          reverse=True):
        steps.append(Step(round(rng.uniform(placed_at, end), 2),
                          {"status": rng.choice(OPEN_SPELLINGS), "remains": remains}))
    steps.sort(key=lambda step: step.at)
    if glitch == "unknown":
        steps.append(Step(round(rng.uniform(placed_at, end), 2),
                          {"status": rng.choice(UNKNOWN_WORDS), "remains": quantity}))
    elif glitch == "bad_entry":
        steps.append(Step(round(rng.uniform(placed_at, end), 2),
                          {"entry": rng.choice(BAD_ENTRIES)}))
    elif glitch == "reply":
        kind = rng.choice(REPLY_FAULTS)
        glitch = f"reply_{kind}"
        steps.append(Step(round(rng.uniform(placed_at, end), 2), {"reply": kind}))
        if kind == "omit":
            final = Final(final.status, final.remains, final.name, final.parsed_remains, None)
    steps.sort(key=lambda step: step.at)
    regression = _regression(rng, quantity) if rng.random() < 0.3 else None
    return OrderPlan(
        id=5000 + n, user_id=rng.choice(users), provider_order_id=str(70000 + n),
        quantity=quantity, charge=Decimal(rng.randint(1, 2000)) / 100, placed_at=placed_at,
        steps=tuple(steps), final=final, regression=regression, glitch=glitch)


def _final(rng: random.Random, quantity: int, fault_seconds: float, placed_at: float,
           *, held: bool) -> Final:
    name = rng.choices(("Completed", "Partial", "Canceled"), (40, 35, 25))[0]
    status = rng.choice(TERMINAL_SPELLINGS[name])
    at = None if held else round(rng.uniform(placed_at + 0.5, fault_seconds), 2)
    if name == "Partial":
        remains = rng.randint(-5, quantity + 50)
        return Final(status, _remains_form(rng, remains), name, remains, at)
    remains = 0 if name == "Completed" else rng.choice((quantity, 0, rng.randint(0, quantity)))
    return Final(status, _remains_form(rng, remains), name, remains, at)


def _remains_form(rng: random.Random, remains: int) -> Any:
    """The ways panels write an integer remains: 157, "157", "157.0", " 157 "."""
    return rng.choice((remains, str(remains), f"{remains}.0", f" {remains} "))


def _regression(rng: random.Random, quantity: int) -> dict[str, Any]:
    kind = rng.choice(("terminal", "terminal", "open", "unknown", "bad_entry"))
    if kind == "terminal":
        name = rng.choice(tuple(TERMINAL_SPELLINGS))
        remains = rng.randint(-5, quantity + 50) if name == "Partial" else quantity
        return {"status": rng.choice(TERMINAL_SPELLINGS[name]), "remains": remains}
    if kind == "open":
        return {"status": rng.choice(OPEN_SPELLINGS), "remains": quantity}
    if kind == "unknown":
        return {"status": rng.choice(UNKNOWN_WORDS), "remains": 0}
    return {"entry": rng.choice(BAD_ENTRIES)}


def _deposits(rng: random.Random, users: tuple[int, ...], orders: tuple[OrderPlan, ...],
              fault_seconds: float) -> tuple[Deposit, ...]:
    deposits = []
    for user in users:
        owed = sum((o.charge for o in orders if o.user_id == user), Decimal(0))
        # Usually enough for every order; sometimes short, so that some orders get a 409.
        start = owed + Decimal(rng.randint(0, 500)) / 100 if rng.random() < 0.8 \
            else (owed * Decimal(rng.randint(40, 90)) / 100).quantize(MONEY)
        deposits.append(Deposit(user, max(start, MONEY), f"start-{user}", -1.0,
                                repeats=rng.randint(0, 1)))
        for k in range(rng.randint(0, 2)):
            deposits.append(Deposit(user, Decimal(rng.randint(1, 5000)) / 100, f"top-{user}-{k}",
                                    round(rng.uniform(0.0, fault_seconds), 2),
                                    repeats=rng.randint(0, 2)))
    return tuple(deposits)


def _faults(rng: random.Random, users: tuple[int, ...], fault_seconds: float,
            database_faults: bool) -> tuple[Fault, ...]:
    def at() -> float:
        return round(rng.uniform(0.0, fault_seconds - 0.5), 2)

    faults = [Fault(at(), "simulator", settings=_simulator_faults(rng))
              for _ in range(rng.randint(1, 3))]
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(PROCESS_KILLS)
        faults.append(Fault(at(), kind, target=rng.randrange(2),
                            down_for=round(rng.uniform(0.2, 2.0), 2)))
    for _ in range(rng.choices((0, 1, 2), (40, 50, 10))[0]):
        faults.append(Fault(at(), rng.choice(REDIS_RESTARTS),
                            down_for=round(rng.uniform(0.3, 2.5), 2)))
    if database_faults:
        faults.extend(Fault(at(), "db_kill", target=rng.randint(1, 3))
                      for _ in range(rng.randint(1, 3)))
    faults.extend(Fault(at(), "client_reconnect", target=rng.choice(users))
                  for _ in range(rng.randint(1, 3)))
    faults.sort(key=lambda fault: fault.at)
    return tuple(faults)


def _simulator_faults(rng: random.Random) -> dict[str, Any]:
    return {
        "latency_ms": rng.choice((0, 0, 20, 100, 250)),
        "error_rate": round(rng.uniform(0, 0.3), 3),
        "html_rate": round(rng.uniform(0, 0.15), 3),
        "timeout_rate": rng.choice((0.0, 0.0, 0.02, 0.05)),
        "rate_limit_per_min": rng.choice((0, 0, 0, 0, 40)),
    }
