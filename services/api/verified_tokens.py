"""Access tokens already verified by this process, until they expire.

Decoding a JWT (base64, JSON, HMAC, claim checks in PyJWT) was a sixth of the api's CPU on a
polled list. An access token is self-contained and cannot be revoked before it expires (that is
why it lives 15 minutes), so a token that passed every check once passes them again until its
`exp`: remember the result instead of repeating the work. Only tokens that passed are kept;
a refused one is checked afresh every time."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime

from litestar.security.jwt import Token

MAX_TOKENS = 50_000


class VerifiedTokens:
    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self._tokens: OrderedDict[str, Token] = OrderedDict()
        self._max = max_tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, encoded: str, now: datetime | None = None) -> Token | None:
        token = self._tokens.get(encoded)
        if token is None:
            return None
        now = now or datetime.now(UTC)
        if token.exp <= now:
            del self._tokens[encoded]
            return None
        self._tokens.move_to_end(encoded)
        return token

    def remember(self, encoded: str, token: Token) -> None:
        self._tokens[encoded] = token
        self._tokens.move_to_end(encoded)
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)
