"""POST /auth/signup, /auth/login, /auth/refresh and GET /me."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.params import JSONBody
from msgspec import Meta

from events.ids import new_id
from ledger.consumer import CHECKPOINT as LEDGER_CHECKPOINT
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of, source_address
from services.deciders.email_claim import ClaimEmail, EmailClaimState, claim_id, normalise_email
from services.deciders.user import (
    ACCOUNT_EXISTS,
    RotateRefreshToken,
    SignUp,
    StartSession,
    UserState,
)
from services.errors import Conflict, Unauthorized
from services.security.passwords import hash_password, verify_password
from services.security.refresh_tokens import new_refresh_token, token_hash, user_of

USERS = PROJECTIONS["users"]

# Surrounding whitespace is allowed here and stripped by normalise_email.
Email = Annotated[str, Meta(max_length=254, pattern=r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$")]
Password = Annotated[str, Meta(min_length=8, max_length=256)]


class SignupIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    email: Email
    password: Password


class LoginIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Annotated[str, Meta(max_length=254)]
    password: Annotated[str, Meta(max_length=256)]


class RefreshIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=512)]


class TokensOut(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


def _now() -> datetime:
    return datetime.now(UTC)


def _tokens(request: Request[Any, Any, Any], user_id: str, refresh_token: str) -> TokensOut:
    ctx = context_of(request)
    ttl = ctx.settings.access_token_ttl_s
    access = ctx.jwt.create_token(identifier=user_id, token_expiration=timedelta(seconds=ttl))
    return TokensOut(
        access_token=access, refresh_token=refresh_token, token_type="Bearer", expires_in=ttl
    )


async def _claim(request: Request[Any, Any, Any], email: str) -> str:
    """The user id `email`'s account has: a new random one, unless a claim names one already
    (then the signup that made the claim won, or died before creating the account: either way the
    account is made under that id at most once)."""
    ctx = context_of(request)
    proposed = new_id()
    reply = await ctx.bus.send(
        "email_claim",
        claim_id(email),
        ClaimEmail(actor=proposed, at=_now(), email=email, user_id=proposed),
        request.headers.get("x-request-id") or new_id(),
        source=source_address(request),
    )
    return msgspec.json.decode(reply.state, type=EmailClaimState).user_id


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/signup", status_code=201, summary="Create an account")
    async def signup(self, request: Request[Any, Any, Any], data: JSONBody[SignupIn]) -> TokensOut:
        ctx = context_of(request)
        email = normalise_email(data.email)
        # Accounts made before email claims existed have none: refuse their emails here.
        if await read_models.user_with_email(ctx.pool, USERS, email) is not None:
            raise Conflict(ACCOUNT_EXISTS)
        user_id = await _claim(request, email)
        refresh = new_refresh_token(user_id)
        await ctx.execute(
            USERS,
            user_id,
            SignUp(
                actor=user_id,
                at=_now(),
                signup_credit_micros=ctx.settings.signup_credit_micros,
                email=email,
                name=data.name.strip(),
                password_hash=await hash_password(data.password),
                family_id=new_id(),
                token_hash=token_hash(refresh),
                expires_at=_now() + timedelta(seconds=ctx.settings.refresh_token_ttl_s),
            ),
            request,
            # The welcome credit is in the balance when signup answers: a create straight after
            # it must not be refused for a balance the ledger has not posted yet.
            also_visible_in=(LEDGER_CHECKPOINT,) if ctx.settings.signup_credit_micros else (),
        )
        return _tokens(request, user_id, refresh)

    @post("/login", status_code=200, summary="Log in with email and password")
    async def login(self, request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> TokensOut:
        ctx = context_of(request)
        email = normalise_email(data.email)
        address = request.client.host if request.client else "unknown"
        attempt = ctx.throttle.reserve(email, address)
        try:
            user: UserState | None = await read_models.user_with_email(ctx.pool, USERS, email)
            # An unknown email costs as much time as a wrong password (a dummy hash is verified).
            valid = await verify_password(user.password_hash if user else None, data.password)
        except BaseException:
            ctx.throttle.release(attempt)
            raise
        if not valid:
            raise Unauthorized("email or password is incorrect")
        assert user is not None  # verify_password refuses a missing hash
        ctx.throttle.succeeded(attempt)
        user_id = user.id
        refresh = new_refresh_token(user_id)
        await ctx.execute(
            USERS,
            user_id,
            StartSession(
                actor=user_id,
                at=_now(),
                family_id=new_id(),
                token_hash=token_hash(refresh),
                expires_at=_now() + timedelta(seconds=ctx.settings.refresh_token_ttl_s),
            ),
            request,
        )
        return _tokens(request, user_id, refresh)

    @post("/refresh", status_code=200, summary="Trade a refresh token for new tokens")
    async def refresh(
        self, request: Request[Any, Any, Any], data: JSONBody[RefreshIn]
    ) -> TokensOut:
        ctx = context_of(request)
        user_id = user_of(data.refresh_token)
        if user_id is None or not read_models.valid_id(user_id):
            raise Unauthorized("refresh token is not valid; log in again")
        rotated = new_refresh_token(user_id)
        new_hash = token_hash(rotated)
        state: UserState = await ctx.execute(
            USERS,
            user_id,
            RotateRefreshToken(
                actor=user_id,
                at=_now(),
                presented_hash=token_hash(data.refresh_token),
                token_hash=new_hash,
                expires_at=_now() + timedelta(seconds=ctx.settings.refresh_token_ttl_s),
            ),
            request,
        )
        if not any(
            f.current_hash == new_hash and f.revoked_reason is None for f in state.families.values()
        ):
            raise Unauthorized(
                "this refresh token was already used, so every session from that login was"
                " revoked; log in again"
            )
        return _tokens(request, user_id, rotated)
