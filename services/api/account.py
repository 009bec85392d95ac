"""/me and /billing/balance: the signed-in customer's profile, spend controls, SSH keys and money.

Spend controls are the customer's own (`PATCH /me`): `spendLimitPerHour` (USD per hour across
everything running, default 80, as RunPod) and an optional `monthlyBudget` (USD). A create that
would break either, or that comes with an empty balance, is refused with 402; when the balance or
the budget runs out, the ledger stops what runs (see `ledger.spend_control`).

SSH public keys are the customer's too (`PATCH /me` with `sshPublicKeys`, the whole list: leave
one out to remove it). Each must be an OpenSSH public key line (services/ssh_keys.py); instances
get them at their next start as `PUBLIC_KEY`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar import Request, get, patch
from litestar.params import JSONBody
from msgspec import Meta

from ledger.money import MICROS_PER_USD, usd_to_micros
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.spending import spending
from services.deciders.user import SetSpendControls, SetSshPublicKeys, UserState
from services.errors import BadRequest, Unauthorized
from services.ssh_keys import MAX_SSH_KEY_LENGTH, MAX_SSH_KEYS, InvalidSshKey, normalised_ssh_key

USERS = PROJECTIONS["users"]
# USD as a JSON number. Read as a float only to be turned at once into exact micro-dollars by its
# shortest decimal form (exact for up to 15 significant digits; money here has at most 13).
Usd = Annotated[float, Meta(ge=0, le=1_000_000)]
SshKeys = Annotated[
    list[Annotated[str, Meta(max_length=MAX_SSH_KEY_LENGTH)]], Meta(max_length=MAX_SSH_KEYS)
]


class UserOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    email: str
    created_at: datetime
    spend_limit_per_hour: float
    spend_limit_per_hour_micros: int
    monthly_budget: float | None
    monthly_budget_micros: int | None
    # OpenSSH public key lines, as stored (normalised).
    ssh_public_keys: list[str]


class UserPatch(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    spend_limit_per_hour: Usd | msgspec.UnsetType = msgspec.UNSET
    # null removes the budget.
    monthly_budget: Usd | msgspec.UnsetType | None = msgspec.UNSET
    # The whole list; [] removes every key.
    ssh_public_keys: SshKeys | msgspec.UnsetType = msgspec.UNSET


class BalanceOut(msgspec.Struct, rename="camel", kw_only=True):
    balance: float
    balance_micros: int
    # Everything running or stored now, per hour.
    spend_per_hour: float
    spend_per_hour_micros: int
    # At that rate; null when nothing costs money or the balance is already used up.
    hours_until_empty: float | None
    empty_at: datetime | None
    month_spend: float
    month_spend_micros: int
    spend_limit_per_hour: float
    monthly_budget: float | None


def _usd(micros: int | None) -> float | None:
    return None if micros is None else micros / MICROS_PER_USD


def _micros(field: str, usd: float) -> int:
    try:
        return usd_to_micros(Decimal(repr(usd)))
    except ValueError:
        raise BadRequest(f"field `{field}`: at most 6 decimals (a micro-dollar)") from None


def view(user: UserState) -> UserOut:
    return UserOut(
        id=user.id,
        name=user.name,
        email=user.email,
        created_at=user.created_at,
        spend_limit_per_hour=user.spend_limit_per_hour_micros / MICROS_PER_USD,
        spend_limit_per_hour_micros=user.spend_limit_per_hour_micros,
        monthly_budget=_usd(user.monthly_budget_micros),
        monthly_budget_micros=user.monthly_budget_micros,
        ssh_public_keys=user.ssh_public_keys,
    )


def _ssh_keys(keys: list[str]) -> list[str]:
    normalised = []
    for index, key in enumerate(keys):
        try:
            normalised.append(normalised_ssh_key(key))
        except InvalidSshKey as exc:
            raise BadRequest(f"field `sshPublicKeys`: key {index + 1}: {exc}") from None
    return normalised


async def current_user(request: Request[Any, Any, Any]) -> UserState:
    user: UserState | None = await read_models.get(context_of(request).pool, USERS, request.user.id)
    if user is None:
        raise Unauthorized("this account no longer exists")
    return user


@get("/me", tags=["account"], summary="The authenticated user's profile and spend controls")
async def me(request: Request[Any, Any, Any]) -> UserOut:
    return view(await current_user(request))


@patch(
    "/me",
    tags=["account"],
    summary="Set your spend limit per hour, monthly budget and SSH public keys",
)
async def update_me(request: Request[Any, Any, Any], data: JSONBody[UserPatch]) -> UserOut:
    ctx = context_of(request)
    user = await current_user(request)
    keys = (
        None
        if isinstance(data.ssh_public_keys, msgspec.UnsetType)
        else _ssh_keys(data.ssh_public_keys)
    )
    limit = user.spend_limit_per_hour_micros
    budget = user.monthly_budget_micros
    if not isinstance(data.spend_limit_per_hour, msgspec.UnsetType):
        limit = _micros("spendLimitPerHour", data.spend_limit_per_hour)
    if not isinstance(data.monthly_budget, msgspec.UnsetType):
        budget = (
            None if data.monthly_budget is None else _micros("monthlyBudget", data.monthly_budget)
        )
    command = SetSpendControls(
        actor=user.id,
        at=datetime.now(UTC),
        spend_limit_per_hour_micros=limit,
        monthly_budget_micros=budget,
    )
    user = await ctx.execute(USERS, user.id, command, request)
    if keys is not None:
        keys_command = SetSshPublicKeys(actor=user.id, at=datetime.now(UTC), keys=keys)
        user = await ctx.execute(USERS, user.id, keys_command, request)
    return view(user)


@get("/billing/balance", tags=["billing"], summary="Balance, spend per hour and this month")
async def balance(request: Request[Any, Any, Any]) -> BalanceOut:
    ctx = context_of(request)
    user = await current_user(request)
    now = datetime.now(UTC)
    spent = await spending(ctx.pool, user.id, now)
    hours = (
        spent.balance_micros / spent.per_hour_micros
        if spent.per_hour_micros > 0 and spent.balance_micros > 0
        else None
    )
    return BalanceOut(
        balance=spent.balance_micros / MICROS_PER_USD,
        balance_micros=spent.balance_micros,
        spend_per_hour=spent.per_hour_micros / MICROS_PER_USD,
        spend_per_hour_micros=spent.per_hour_micros,
        hours_until_empty=hours,
        empty_at=now + timedelta(hours=hours) if hours is not None else None,
        month_spend=spent.month_micros / MICROS_PER_USD,
        month_spend_micros=spent.month_micros,
        spend_limit_per_hour=user.spend_limit_per_hour_micros / MICROS_PER_USD,
        monthly_budget=_usd(user.monthly_budget_micros),
    )
