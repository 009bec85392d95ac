"""Who may use a console page, and which form posts count.

- `ConsoleSession`: the request's user from the session cookie (services/api/browser_session.py),
  set as `request.user` exactly as the REST API's authentication sets it, so the REST handlers the
  pages call see the same user. No session: the page answers with the sign-in page's address.
- `SameOrigin`: a form post, or any other unsafe request, sent from another origin is refused
  before anything reads it. Browsers name the origin on every such request; SameSite=Lax keeps
  the session cookie off other sites' posts, but not off a sibling origin's (another port of
  127.0.0.1, an instance's own `<id>-<N>.<domain>`), and this is what stops those.
- CSRF tokens (Litestar's `CSRFConfig`): every form carries one, checked against its cookie; a
  post without a matching one is refused even from this origin."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.types import ASGIApp, Receive, Scope, Send

from services.api.authentication import AuthUser
from services.api.browser_session import session_token, user_of_session
from services.deciders.user import UserState

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_COOKIE = "gpw_csrf"
CSRF_FIELD = "_csrf_token"
CSRF_HEADER = "x-csrftoken"
SIGN_IN_PATHS = "^/$|^/console/(login|signup)$"


def own_origin(scope: Mapping[str, Any]) -> str:
    """`scheme://host[:port]` the request was sent to, as a browser writes it in `Origin`."""
    scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
    host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
    return f"{scheme}://{host}".lower()


def same_origin(scope: Mapping[str, Any], also: str | None = None) -> bool:
    """False when the request names another origin than its own (a page elsewhere sent it);
    True when it names its own, or none (browsers name it on every cross-origin request, form
    posts and WebSockets included). `also`: another origin the site is known by."""
    origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
    if origin is None:
        return True
    sent = origin.decode("latin-1").lower().rstrip("/")
    return sent in {own_origin(scope), (also or "").lower().rstrip("/")} - {""}


@dataclass(frozen=True)
class ConsoleAuth:
    """`request.auth` on a console page: the user as the read model has it, and the session."""

    user: UserState
    token: str


class ConsoleSession(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = session_token(connection.scope["scheme"], connection.headers)
        user = await user_of_session(connection.app.state.ctx.pool, token) if token else None
        if user is None:
            raise NotAuthorizedException("sign in to use the console")
        return AuthenticationResult(user=AuthUser(id=user.id), auth=ConsoleAuth(user, token))


class SameOrigin(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method", "GET") not in SAFE_METHODS:
            proxy = getattr(scope["litestar_app"].state, "instance_proxy", None)
            if not same_origin(scope, proxy.settings.public_url if proxy else None):
                raise PermissionDeniedException("cross-origin request refused")
        await next_app(scope, receive, send)


def csrf_config(jwt_secret: str, https: bool) -> CSRFConfig:
    """CSRF tokens signed with a key of their own, derived from the JWT secret."""
    secret = hmac.new(jwt_secret.encode(), b"gpuworker console csrf", hashlib.sha256).hexdigest()
    return CSRFConfig(
        secret=secret,
        cookie_name=CSRF_COOKIE,
        header_name=CSRF_HEADER,
        cookie_httponly=True,
        cookie_samesite="lax",
        cookie_secure=https,
        cookie_path="/console",
    )
