"""Sign up, log in and log out in a browser.

Signing up and logging in are the REST routes' own (`POST /auth/signup`, `POST /auth/login`:
the same checks, login throttle and messages); the refresh token they issue becomes the session
cookie (services/api/browser_session.py) and the access token is dropped. Logging out ends that
token's family for good (`EndSession`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from services.api.auth import LoginIn, SignupIn, TokensOut
from services.api.browser_session import USERS, cookie_name, served_over_https
from services.api.context import context_of
from services.console.forms import body_of, form_of
from services.console.guards import ConsoleAuth
from services.console.render import SECURITY_HEADERS, page
from services.console.rest import rest_of
from services.deciders.user import EndSession
from services.errors import GpuWorkerError
from services.security.refresh_tokens import token_hash

HOME = "/console/"


def _next(value: str | None) -> str:
    """Where to go once signed in: a console page of this site, never another site."""
    if value and value.startswith("/console/") and not value.startswith("/console//"):
        return value
    return HOME


def _signed_in(request: Request[Any, Any, Any], tokens: TokensOut, to: str) -> Redirect:
    https = request.url.scheme == "https" or served_over_https()
    cookie = Cookie(
        key=cookie_name(request.url.scheme),
        value=tokens.refresh_token,
        path="/",
        httponly=True,
        secure=https,
        samesite="lax",
        # A session cookie: gone when the browser closes; the server ends it after the refresh
        # token's lifetime (GPUWORKER_REFRESH_TOKEN_TTL) in any case.
    )
    return Redirect(_next(to), status_code=303, cookies=[cookie], headers=SECURITY_HEADERS)


@get("/console/login", name="console:login")
async def login_page(
    request: Request[Any, Any, Any], next: FromQuery[str | None] = None
) -> Template:
    return page(request, "login.html", next=_next(next))


@post("/console/login")
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)
    to = form.get("next", HOME)
    try:
        body = body_of(
            {"email": form.get("email", ""), "password": form.get("password", "")}, LoginIn
        )
        tokens = await rest_of(request).call("POST", "/auth/login", request, TokensOut, data=body)
    except GpuWorkerError as exc:
        return page(
            request,
            "login.html",
            exc.code,
            error=exc.message,
            email=form.get("email", ""),
            next=_next(to),
        )
    return _signed_in(request, tokens, to)


@get("/console/signup", name="console:signup")
async def signup_page(request: Request[Any, Any, Any]) -> Template:
    return page(request, "signup.html")


@post("/console/signup")
async def signup(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)
    try:
        body = body_of({key: form.get(key, "") for key in ("name", "email", "password")}, SignupIn)
        tokens = await rest_of(request).call("POST", "/auth/signup", request, TokensOut, data=body)
    except GpuWorkerError as exc:
        return page(
            request,
            "signup.html",
            exc.code,
            error=exc.message,
            name=form.get("name", ""),
            email=form.get("email", ""),
        )
    return _signed_in(request, tokens, HOME)


@post("/console/logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    auth: ConsoleAuth = request.auth
    command = EndSession(
        actor=auth.user.id, at=datetime.now(UTC), presented_hash=token_hash(auth.token)
    )
    await context_of(request).execute(USERS, auth.user.id, command, request)
    response = Redirect("/console/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(cookie_name(request.url.scheme), path="/")
    return response
