"""WebSocket close codes the gateway sends, and what a client should do about each.

Ranges (the same split as the browser client makes):

- 1000-1015 are the protocol's own. 1001 GOING_AWAY (this gateway is shutting down) and
  1013 TRY_AGAIN_LATER (Redis or the database did not answer) mean: reconnect, with backoff,
  and resume with ``last_id``; another gateway serves you meanwhile.
- 4000-4099 are ours and mean the connection was refused or dropped for a reason of the
  client's. 4008 TOO_SLOW is the only one there that says "reconnect and resume": the client
  did not read fast enough, and its socket's unsent output passed the hub's write-buffer
  limit (or, during a replay, too many live events were held for it). 4001 UNAUTHORIZED is final
  until the client has a new token; 4400 BAD_REQUEST is final.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000  # the client or the server finished on purpose
    GOING_AWAY = 1001  # gateway shutting down (SIGTERM): reconnect and resume elsewhere
    TRY_AGAIN_LATER = 1013  # a dependency failed while greeting: reconnect with backoff
    UNAUTHORIZED = 4001  # token missing, forged or expired: final until a new token
    TOO_SLOW = 4008  # too much unsent output: reconnect and resume with last_id
    BAD_REQUEST = 4400  # malformed request: final, retrying will not help


REASONS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "bye",
    CloseCode.GOING_AWAY: "server shutting down",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.UNAUTHORIZED: "unauthorized",
    CloseCode.TOO_SLOW: "too slow: reconnect and resume",
    CloseCode.BAD_REQUEST: "bad request",
}

_FINAL = frozenset({CloseCode.UNAUTHORIZED, CloseCode.BAD_REQUEST})


def should_reconnect(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect (and resume) on its own."""
    return code not in _FINAL


def reason(code: CloseCode) -> bytes:
    """The short close message sent with ``code``."""
    return REASONS[code].encode()
