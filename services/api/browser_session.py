"""The web console's sign-in: a browser session is a refresh-token family, carried in a cookie.

A browser cannot keep a token anywhere a page's script could not read it except in an HttpOnly
cookie, so the console never hands the browser an access token: the cookie holds the refresh token
that /auth/login or /auth/signup issued (the same code made it, with the same throttling and
errors), and each request is checked against the users read model: the token must be its family's
current one, the family neither revoked nor expired. Logging out revokes the family
(`EndSession`), which every api replica sees in the read model at once. The token is never rotated
while it is a cookie, so two tabs, or a page and its live updates, never race a rotation (which
would look like a stolen token and end the session).

The cookie is `HttpOnly`, `SameSite=Lax` and, over https, `Secure` with the `__Host-` prefix
(which also keeps a sibling subdomain, such as an instance's own proxy domain, from planting one).
Cookie-authenticated requests are accepted only by the console's routes, which check CSRF tokens
and `Origin` (services/console/guards.py). The REST API and the instance proxy take
`Authorization: Bearer` only: no cookie acts on them (the proxy's `/proxy/…` pages share the api's
origin, and their script is anyone's), and the proxy strips the console's cookies both ways."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Any

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.deciders.user import UserState
from services.security.refresh_tokens import token_hash, user_of

USERS = PROJECTIONS["users"]
PLAIN_NAME = "gpw_session"
# Over https: the browser refuses it unless Secure, Path=/ and without Domain.
HTTPS_NAME = "__Host-gpw_session"
# The console's own cookies; the instance proxy never hands them to a container.
CONSOLE_COOKIES = frozenset({PLAIN_NAME, HTTPS_NAME, "gpw_csrf"})


def served_over_https() -> bool:
    """Whether customers reach the api over https (GPUWORKER_PUBLIC_URL): then the console's
    cookies are Secure even when a TLS-terminating proxy hands the api plain http."""
    return (os.environ.get("GPUWORKER_PUBLIC_URL") or "").lower().startswith("https://")


def cookie_name(scheme: str) -> str:
    return HTTPS_NAME if scheme in ("https", "wss") else PLAIN_NAME


def session_token(scheme: str, headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]]) -> str:
    """The session cookie's value ("" when none) from a request's headers."""
    if isinstance(headers, Mapping):
        raw = headers.get("cookie", "")
    else:
        raw = "; ".join(v.decode("latin-1") for k, v in headers if k.lower() == b"cookie")
    if not raw:
        return ""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no session, not an error
        return ""
    morsel = jar.get(cookie_name(scheme))
    return morsel.value if morsel is not None else ""


async def user_of_session(pool: Any, token: str) -> UserState | None:
    """The signed-in user when `token` is a live session, else None."""
    user_id = user_of(token) if token else None
    if user_id is None or not read_models.valid_id(user_id):
        return None
    user: UserState | None = await read_models.get(pool, USERS, user_id)
    if user is None:
        return None
    presented = token_hash(token)
    found = user.family_of(presented)
    if found is None:
        return None
    family = found[1]
    live = (
        family.revoked_reason is None
        and family.current_hash == presented
        and family.expires_at > datetime.now(UTC)
    )
    return user if live else None
