"""The memo of verified access tokens never accepts what a fresh check would refuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from litestar.security.jwt import Token

from services.api.verified_tokens import VerifiedTokens


def token(sub: str, lives: timedelta, now: datetime) -> Token:
    return Token(sub=sub, exp=now + lives, iat=now)


def _now() -> datetime:
    """Token() checks its own times against the real clock, so each test takes it when it runs
    (not when the module was collected, minutes earlier in a full run)."""
    return datetime.now(UTC) - timedelta(seconds=1)


def test_a_token_is_remembered_only_until_it_expires() -> None:
    now = _now()
    memo = VerifiedTokens()
    memo.remember("t1", token("u1", timedelta(minutes=15), now))
    remembered = memo.get("t1", now + timedelta(minutes=14))
    assert remembered is not None and remembered.sub == "u1"
    assert memo.get("t1", now + timedelta(minutes=15)) is None
    # Gone for good once expired: a later clock skew cannot bring it back.
    assert memo.get("t1", now) is None
    assert memo.get("never-seen", now) is None


def test_the_memo_is_bounded_and_forgets_the_least_recently_used() -> None:
    now = _now()
    memo = VerifiedTokens(max_tokens=2)
    for name in ("a", "b"):
        memo.remember(name, token(name, timedelta(minutes=5), now))
    assert memo.get("a", now) is not None  # "b" is now the least recently used
    memo.remember("c", token("c", timedelta(minutes=5), now))
    assert len(memo) == 2
    assert memo.get("b", now) is None
    assert memo.get("a", now) is not None and memo.get("c", now) is not None
