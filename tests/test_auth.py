"""JWT tokens for WebSockets and the admin bearer check."""

from __future__ import annotations

import time

import jwt
import pytest

from wsgateway.auth import TokenError, admin_authorized, mint_token, verify_token

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def _encode(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def test_mint_then_verify_returns_the_user_id() -> None:
    assert verify_token(SECRET, mint_token(SECRET, 111)) == 111


def test_short_secret_works_without_warnings() -> None:
    assert verify_token("short", mint_token("short", 5)) == 5


def test_expired_token_is_refused() -> None:
    token = _encode({"sub": "111", "exp": int(time.time()) - 10})
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token)


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "111", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(TokenError, match="algorithm"):
        verify_token(SECRET, token)


def test_other_hmac_algorithm_is_refused() -> None:
    token = _encode({"sub": "111", "exp": int(time.time()) + 60}, SECRET * 2, "HS512")
    with pytest.raises(TokenError, match="algorithm"):
        verify_token(SECRET, token)


def test_wrong_secret_is_refused() -> None:
    token = mint_token("another-secret-that-is-long-enough-too!", 111)
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, token)


def test_missing_exp_is_refused() -> None:
    with pytest.raises(TokenError, match="exp"):
        verify_token(SECRET, _encode({"sub": "111"}))


def test_missing_sub_is_refused() -> None:
    with pytest.raises(TokenError, match="sub"):
        verify_token(SECRET, _encode({"exp": int(time.time()) + 60}))


@pytest.mark.parametrize("sub", ["abc", "0", "-5", "1.5", " 7", "99999999999999999999"])
def test_sub_that_is_not_a_positive_integer_is_refused(sub: str) -> None:
    with pytest.raises(TokenError, match="sub"):
        verify_token(SECRET, _encode({"sub": sub, "exp": int(time.time()) + 60}))


@pytest.mark.parametrize("token", ["", None, "not-a-jwt", "a.b.c"])
def test_missing_or_malformed_token_is_refused(token: str | None) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


@pytest.mark.parametrize("user_id", [0, -1, True, "7"])
def test_mint_refuses_a_bad_user_id(user_id: object) -> None:
    with pytest.raises(ValueError, match="user_id"):
        mint_token(SECRET, user_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer admin-token", True),
    ("bearer admin-token", True),
    ("Bearer wrong", False),
    ("Bearer", False),
    ("Basic admin-token", False),
    ("admin-token", False),
    ("Bearer ädmin", False),
    (None, False),
])
def test_admin_bearer_check(header: str | None, expected: bool) -> None:
    assert admin_authorized(header, "admin-token") is expected


def test_admin_check_without_a_token_is_open_only_in_demo() -> None:
    assert admin_authorized(None, None, demo=True)
    assert not admin_authorized("Bearer x", None, demo=False)
    assert not admin_authorized(None, "set", demo=True)


@pytest.mark.parametrize("header", [
    "Bearer \udce9", "Bearer \xe9", "Bearer admin-token\udcff", "\udce9", "Bearer \x00",
    "Bearer admin-token\x00",
])
def test_admin_check_refuses_non_ascii_and_nul_headers(header: str) -> None:
    """aiohttp hands a header's non-UTF-8 bytes over as lone surrogates; that is no token."""
    assert admin_authorized(header, "admin-token") is False


@pytest.mark.parametrize("token", [
    "\udce9", "\xe9", "a.b.c\udce9", "a\x00.b.c", "\u0661.\u0662.\u0663", "a.b.c\n",
    " a.b.c", "x" * 5000, "a.b", "a.b.c.d",
])
def test_odd_tokens_are_a_token_error(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


def test_a_valid_token_with_odd_characters_appended_is_refused() -> None:
    token = mint_token(SECRET, 111)
    for suffix in ("\udce9", "\x00", "\n", " "):
        with pytest.raises(TokenError):
            verify_token(SECRET, token + suffix)


@pytest.mark.parametrize("sub", ["111\n", "\u0661\u0661\u0661", "\uff11", "111 "])
def test_sub_must_be_ascii_digits_only(sub: str) -> None:
    with pytest.raises(TokenError, match="sub"):
        verify_token(SECRET, _encode({"sub": sub, "exp": int(time.time()) + 60}))
