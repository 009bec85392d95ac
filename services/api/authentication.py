"""Who a request acts for: `Authorization: Bearer <credential>`, where the credential is an access
token from /auth/login (a JWT) or an API key (`gpw_…`, see services/security/api_keys.py).

Litestar's JWT middleware decodes whatever follows the header's first space as a JWT, so an API key
would fail there before any handler could look at it. The middleware below is that same
middleware (same excluded paths, same OpenAPI security scheme, same 401s in the seed's shape
through the app's exception handlers) with one step in front: a Bearer credential that starts with
the API key prefix is looked up as a key and never decoded as a JWT; anything else goes on to the
JWT exactly as before. Either way the request's user is an `AuthUser` whose `id` is the user's,
so routes and the idempotency layer cannot tell the two apart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from services.api.api_key_lookup import ApiKeyLookup
from services.api.verified_tokens import VerifiedTokens
from services.security.api_keys import PREFIX

INVALID_KEY = "API key is not valid (malformed, revoked or never issued)"


class AuthUser(msgspec.Struct, frozen=True):
    id: str


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The credential of an `Authorization: Bearer …` header; None under any other scheme."""
    scheme, _, credential = connection.headers.get("authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


async def user_from_token(
    token: Token, connection: ASGIConnection[Any, Any, Any, Any]
) -> AuthUser | None:
    # Litestar's JWT middleware takes the last word of the header whatever the scheme: insist on
    # "Bearer", so a token sent as "Basic …" or bare is refused (None -> 401).
    if _bearer(connection) is None:
        return None
    # Access tokens are short-lived and self-contained: no database round trip per request.
    return AuthUser(id=token.sub)


class ApiKeyOrJwtMiddleware(JWTAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        credential = _bearer(connection)
        if credential is None:
            return await super().authenticate_request(connection)
        if not credential.startswith(PREFIX):
            verified: VerifiedTokens = connection.app.state.ctx.verified_tokens
            token = verified.get(credential)
            if token is not None:
                return AuthenticationResult(user=AuthUser(id=token.sub), auth=token)
            result = await super().authenticate_request(connection)
            if isinstance(result.auth, Token):
                verified.remember(credential, result.auth)
            return result
        lookup: ApiKeyLookup = connection.app.state.ctx.api_keys
        holder = await lookup.holder_of(credential)
        if holder is None:
            raise NotAuthorizedException(INVALID_KEY)
        return AuthenticationResult(user=AuthUser(id=holder.user_id), auth=holder)


async def user_of_headers(
    ctx: Any, headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]]
) -> AuthUser | None:
    """Whose request this is, for routes outside Litestar's authentication (the instance proxy):
    an API key or an access token in `Authorization: Bearer …`, checked exactly as the
    middleware checks them; None when there is no valid one. Never the console's session cookie
    (services/api/browser_session.py): that is good on the console's own routes only."""
    if isinstance(headers, Mapping):
        value = headers.get("authorization", "")
    else:
        value = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), "")
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    if credential.startswith(PREFIX):
        holder = await ctx.api_keys.holder_of(credential)
        return AuthUser(id=holder.user_id) if holder is not None else None
    # The middleware's memo: a token either path verified is not decoded again until it expires
    # (the proxy checks one on every request, as the middleware does).
    verified: VerifiedTokens = ctx.verified_tokens
    remembered = verified.get(credential)
    if remembered is not None:
        return AuthUser(id=remembered.sub)
    jwt: JWTAuth[Any, Token] = ctx.jwt
    try:
        token = jwt.token_cls.decode(
            encoded_token=credential,
            secret=jwt.token_secret,
            algorithm=jwt.algorithm,
            audience=jwt.accepted_audiences,
            issuer=jwt.accepted_issuers,
            require_claims=jwt.require_claims,
            verify_exp=jwt.verify_expiry,
            verify_nbf=jwt.verify_not_before,
            strict_audience=jwt.strict_audience,
        )
    except NotAuthorizedException:
        return None
    verified.remember(credential, token)
    return AuthUser(id=token.sub)
