"""The instance proxy checks a bearer token as the api's middleware does, memo included: a token
verified once is not decoded again until it expires, and a refused one is never remembered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar

import jwt as pyjwt
from litestar.security.jwt import JWTAuth, Token

from services.api.authentication import AuthUser, user_from_token, user_of_headers
from services.api.verified_tokens import VerifiedTokens


class CountedToken(Token):
    """Token whose decodes are counted: the memo's whole point is to skip them."""

    decodes: ClassVar[int] = 0

    @classmethod
    def decode(cls, *args: Any, **kwargs: Any) -> Any:
        CountedToken.decodes += 1
        return super().decode(*args, **kwargs)


def _ctx(secret: str = "s" * 32) -> SimpleNamespace:
    jwt = JWTAuth[AuthUser, CountedToken](
        retrieve_user_handler=user_from_token, token_secret=secret, token_cls=CountedToken
    )
    return SimpleNamespace(jwt=jwt, verified_tokens=VerifiedTokens(), api_keys=None)


def _bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_a_verified_token_is_decoded_once_and_remembered_for_the_middleware_too() -> None:
    ctx = _ctx()
    encoded = ctx.jwt.create_token(identifier="u1", token_expiration=timedelta(minutes=5))
    CountedToken.decodes = 0

    first = await user_of_headers(ctx, _bearer(encoded))
    second = await user_of_headers(ctx, _bearer(encoded))

    assert first == second == AuthUser(id="u1")
    assert CountedToken.decodes == 1
    remembered = ctx.verified_tokens.get(encoded)
    assert remembered is not None and remembered.sub == "u1"


async def test_a_refused_or_expired_token_is_checked_afresh_and_never_remembered() -> None:
    ctx = _ctx()
    forged = _ctx("f" * 32).jwt.create_token(identifier="u1", token_expiration=timedelta(minutes=5))
    CountedToken.decodes = 0
    for _ in range(2):
        assert await user_of_headers(ctx, _bearer(forged)) is None
    assert CountedToken.decodes == 2
    assert len(ctx.verified_tokens) == 0

    # Remembered once, but past its `exp` now: decoded again, and refused.
    now = datetime.now(UTC)
    past = int((now - timedelta(seconds=5)).timestamp())
    encoded = pyjwt.encode({"sub": "u1", "exp": past, "iat": past - 60}, ctx.jwt.token_secret)
    remembered = Token(sub="u1", exp=now + timedelta(minutes=5), iat=now)
    remembered.exp = now - timedelta(seconds=5)  # Token() itself refuses a past `exp`
    ctx.verified_tokens.remember(encoded, remembered)
    CountedToken.decodes = 0
    assert await user_of_headers(ctx, _bearer(encoded)) is None
    assert CountedToken.decodes == 1
    assert len(ctx.verified_tokens) == 0
