"""Who may call what: the admin bearer token for /v1 and HS256 JWTs for WebSockets."""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import time
import warnings
from collections.abc import Iterator

import jwt

from paxyo.limits import MAX_ID

log = logging.getLogger("wsgateway.auth")

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
_USER_ID = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
# A JWT is three base64url parts; checking the form first keeps any other string (non-ASCII,
# NUL, what a proxy mangled) away from PyJWT, which raises more than InvalidTokenError on some.
_JWT_FORM = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", re.ASCII)
MAX_TOKEN = 4096  # characters: far longer than any token mint_token makes


class TokenError(Exception):
    """A WebSocket token that is missing, malformed, forged or expired; ``str()`` says why."""


def admin_authorized(authorization: str | None, admin_token: str | None, *,
                     demo: bool = False) -> bool:
    """Whether an ``Authorization`` header carries the admin bearer token.

    Without a configured token only demo mode is open; elsewhere nothing is. A header that is
    not ASCII (aiohttp hands its non-UTF-8 bytes over as lone surrogates) is simply not the
    token.
    """
    if not admin_token:
        return demo
    if authorization is None or not authorization.isascii():
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(presented.strip().encode(), admin_token.encode())


def mint_token(secret: str, user_id: int, ttl: int = 3600) -> str:
    """An HS256 token for ``user_id`` that expires in ``ttl`` seconds."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or not 0 < user_id <= MAX_ID:
        raise ValueError(f"user_id must be a positive integer, not {user_id!r}")
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + int(ttl)}
    with _short_secrets_allowed():
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None) -> int:
    """The user id a valid token was minted for; raises :class:`TokenError` otherwise."""
    if not token:
        raise TokenError("missing token")
    if len(token) > MAX_TOKEN or _JWT_FORM.fullmatch(token) is None:
        raise TokenError("token is not a JWT")
    try:
        with _short_secrets_allowed():
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature does not match") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError(f"token algorithm is not {ALGORITHM}") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _USER_ID.fullmatch(sub) or int(sub) > MAX_ID:
        raise TokenError("token 'sub' is not a positive integer user id")
    return int(sub)


def warn_if_weak_secret(secret: str | None) -> None:
    """Log once at start-up when the JWT secret is shorter than HS256 deserves."""
    if secret and len(secret.encode()) < MIN_SECRET_BYTES:
        log.warning("PAXYO_JWT_SECRET is shorter than %d bytes; use a longer random secret",
                    MIN_SECRET_BYTES)


@contextlib.contextmanager
def _short_secrets_allowed() -> Iterator[None]:
    # PyJWT warns on every call with a short key; warn_if_weak_secret says it once instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        yield
