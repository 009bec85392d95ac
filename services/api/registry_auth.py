"""/registry-auth: saved registry credentials. The password goes in, never comes out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import Page
from services.api.request_ids import new_resource_id
from services.deciders.registry_auth import (
    CreateRegistryAuth,
    DeleteRegistryAuth,
    RegistryAuthState,
    sealed_for,
)

REGISTRY_AUTHS = PROJECTIONS["registry_auths"]


class RegistryAuthIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    username: Annotated[str, Meta(min_length=1, max_length=256)]
    password: Annotated[str, Meta(min_length=1, max_length=4096)]


class RegistryAuthOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    username: str
    created_at: datetime


def view(state: RegistryAuthState) -> RegistryAuthOut:
    return RegistryAuthOut(
        id=state.id, name=state.name, username=state.username, created_at=state.created_at
    )


class RegistryAuthController(Controller):
    path = "/registry-auth"
    tags = ["registry-auth"]

    @get("/", summary="List saved registry credentials, never their passwords (paged: see `Link`)")
    async def list_registry_auths(
        self,
        request: Request[Any, Any, Any],
        page: Page,
    ) -> Response[list[RegistryAuthOut]]:
        positions, states = await read_models.list_page(
            context_of(request).pool, REGISTRY_AUTHS, request.user.id, page
        )
        return page.response(request, page.of_rows(positions, [view(s) for s in states]))

    @post("/", status_code=201, summary="Save registry credentials")
    async def create_registry_auth(
        self, request: Request[Any, Any, Any], data: JSONBody[RegistryAuthIn]
    ) -> RegistryAuthOut:
        ctx = context_of(request)
        auth_id = new_resource_id(request)
        command = CreateRegistryAuth(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            username=data.username,
            password_ciphertext=ctx.box.seal(data.password, sealed_for(auth_id)),
        )
        return view(await ctx.execute(REGISTRY_AUTHS, auth_id, command, request))

    @delete("/{auth_id:str}", status_code=204, summary="Remove registry credentials")
    async def delete_registry_auth(
        self, request: Request[Any, Any, Any], auth_id: FromPath[str]
    ) -> None:
        ctx = context_of(request)
        read_models.checked_id(auth_id, "registry credential")
        await ctx.execute(
            REGISTRY_AUTHS,
            auth_id,
            DeleteRegistryAuth(actor=request.user.id, at=datetime.now(UTC)),
            request,
        )
