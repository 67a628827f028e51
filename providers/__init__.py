"""Upstream providers speaking the SMM panel API v2: reply parsing, client, simulator.

- :mod:`providers.replies` turns reply bodies into values, with no I/O. Whole-body problems
  are :class:`ReplyError` (transient: HTML page, empty, not JSON) or
  :class:`ProviderErrorReply` (a JSON ``{"error": ...}``, final); per-order problems are
  :class:`EntryError` values.
- :mod:`providers.client` sends the requests. Concurrency: a :class:`ProviderClient` belongs to
  one event loop and may be shared by its tasks; it never owns the ``aiohttp`` session.
  Retries: idempotent actions retry transient failures with exponential jitter; ``add`` is
  never retried, because a request that timed out may have placed the order.
- :mod:`providers.simulator` is a Perfect-Panel-like HTTP server for tests, demo and benchmarks.

Missing ids and per-order errors mean "no change", never "canceled".
"""

from providers.client import ProviderClient, ProviderConfig, ProviderUnavailable
from providers.replies import EntryError, ProviderErrorReply, ReplyError, StatusEntry

__all__ = [
    "EntryError",
    "ProviderClient",
    "ProviderConfig",
    "ProviderErrorReply",
    "ProviderUnavailable",
    "ReplyError",
    "StatusEntry",
]
