"""The gateway's full-collection policy: driven by closed connections, not by promotions."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from wsgateway.gc_policy import NEVER, FullCollectionPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def full_collections() -> Iterator[list[dict[str, Any]]]:
    """Every oldest-generation collection the interpreter runs while the test runs."""
    seen: list[dict[str, Any]] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(info)

    gc.callbacks.append(callback)
    yield seen
    gc.callbacks.remove(callback)


def test_collects_when_a_quarter_of_the_open_connections_have_closed() -> None:
    calls: list[int] = []
    clock = FakeClock()
    policy = FullCollectionPolicy(min_closed=10, max_interval=600, clock=clock,
                                  collect=lambda generation: calls.append(generation) or 0)
    assert not policy.maybe_collect(open_connections=1000)  # opening alone never triggers
    for _ in range(249):
        policy.connection_closed()
    assert not policy.maybe_collect(open_connections=1000)
    policy.connection_closed()
    assert policy.maybe_collect(open_connections=1000)
    assert calls == [2]
    assert not policy.maybe_collect(open_connections=1000)  # the count starts again
    for _ in range(10):  # few open: at least min_closed
        policy.connection_closed()
    assert policy.maybe_collect(open_connections=3)
    clock.now += 599
    assert not policy.maybe_collect(open_connections=3)
    clock.now += 1  # overdue: other cyclic garbage is collected too
    assert policy.maybe_collect(open_connections=3)
    assert calls == [2, 2, 2]


def test_installed_policy_stops_automatic_full_collections_and_uninstall_restores(
        full_collections: list[dict[str, Any]]) -> None:
    before = gc.get_threshold()
    policy = FullCollectionPolicy()

    def promote_many() -> list[list[int]]:
        # Long-lived containers, like waiter futures: promoted, but not garbage.
        kept = [[n] for n in range(300_000)]
        for _ in range(3):
            gc.collect(1)  # let young collections promote them
        kept.extend([n] for n in range(300_000))  # enough new allocations to trigger
        return kept

    policy.install()
    try:
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        gc.collect()
        full_collections.clear()
        kept = promote_many()
        assert full_collections == []
        del kept
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before
    gc.collect()
    full_collections.clear()
    kept = promote_many()  # the interpreter's own policy collects the oldest generation
    assert full_collections != []
    del kept
