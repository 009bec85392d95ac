"""/api-keys: long-lived credentials for scripts and SDKs. A key is shown once, in the response that
creates it; lists show its id, name and creation time, never the key or its hash."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from services.api import read_models
from services.api.api_key_lookup import API_KEYS
from services.api.context import context_of
from services.api.pagination import Page
from services.api.request_ids import new_resource_id, seed_of
from services.deciders.api_key import MAX_NAME_LENGTH, ApiKeyState, CreateApiKey, RevokeApiKey
from services.errors import Conflict


class ApiKeyIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("field `name`: must not be blank")


class ApiKeyOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    created_at: datetime


class NewApiKeyOut(ApiKeyOut, kw_only=True):
    # The key itself: in this response only; it cannot be shown again.
    key: str


def view(state: ApiKeyState) -> ApiKeyOut:
    return ApiKeyOut(id=state.id, name=state.name, created_at=state.created_at)


class ApiKeyController(Controller):
    path = "/api-keys"
    tags = ["api-keys"]

    @get("/", summary="List your API keys, never the keys themselves (paged: see `Link`)")
    async def list_api_keys(
        self, request: Request[Any, Any, Any], page: Page
    ) -> Response[list[ApiKeyOut]]:
        positions, states = await read_models.list_page(
            context_of(request).pool, API_KEYS, request.user.id, page
        )
        return page.response(request, page.of_rows(positions, [view(s) for s in states]))

    @post(
        "/",
        status_code=201,
        summary="Create an API key: send it as `Authorization: Bearer <key>`; shown only here",
    )
    async def create_api_key(
        self, request: Request[Any, Any, Any], data: JSONBody[ApiKeyIn]
    ) -> NewApiKeyOut:
        ctx = context_of(request)
        key_id = new_resource_id(request)
        # Under an Idempotency-Key a retry must show the very key the first attempt stored.
        key = ctx.api_keys.hasher.mint(seed_of(request))
        command = CreateApiKey(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            key_hash=ctx.api_keys.hasher.digest(key),
        )
        async with ctx.quotas.held(request.user.id) as usage:
            await usage.check_api_keys(key_id)
            state: ApiKeyState = await ctx.execute(API_KEYS, key_id, command, request)
        if state.key_hash != command.key_hash:
            # Only if api replicas disagree on GPUWORKER_SECRET_KEY: never show a dead key.
            raise Conflict(
                f"API key {state.id} was created by an earlier attempt of this request, and its"
                " key cannot be shown again; revoke it and create another"
            )
        return NewApiKeyOut(id=state.id, name=state.name, created_at=state.created_at, key=key)

    @delete("/{key_id:str}", status_code=204, summary="Revoke an API key: it stops working at once")
    async def revoke_api_key(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> None:
        ctx = context_of(request)
        await ctx.execute(
            API_KEYS,
            read_models.checked_id(key_id, "API key"),
            RevokeApiKey(actor=request.user.id, at=datetime.now(UTC)),
            request,
        )
