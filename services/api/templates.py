"""/templates: the user's own templates plus the built-in public ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.container_fields import (
    ContainerFieldsIn,
    ContainerFieldsOut,
    ContainerFieldsPatch,
    MountPath,
    RegistryAuthId,
    check_container_input,
    check_image_name,
    container_fields_out,
)
from services.api.context import context_of
from services.api.pagination import ListPage, Page
from services.api.request_ids import new_resource_id
from services.deciders.registry_auth import RegistryAuthState
from services.deciders.template import (
    CreateTemplate,
    DeleteTemplate,
    TemplateState,
    UpdateTemplate,
)
from services.errors import BadRequest, NotFound

TEMPLATES = PROJECTIONS["templates"]

Name = Annotated[str, Meta(min_length=1, max_length=128)]
Readme = Annotated[str, Meta(max_length=65536)]


class TemplateIn(ContainerFieldsIn, kw_only=True):
    name: Name
    readme: Readme = ""
    container_registry_auth_id: RegistryAuthId | None = None


class TemplatePatch(ContainerFieldsPatch, kw_only=True):
    name: Name | None = None
    volume_mount_path: MountPath | None = None
    readme: Readme | None = None
    container_registry_auth_id: RegistryAuthId | None = None

    def __post_init__(self) -> None:
        check_container_input(self.volume_mount_path, self.ports)


class TemplateOut(ContainerFieldsOut, kw_only=True):
    id: str
    name: str
    readme: str
    is_public: bool
    container_registry_auth_id: str | None
    created_at: datetime
    updated_at: datetime


def view(state: TemplateState) -> TemplateOut:
    return TemplateOut(
        id=state.id,
        name=state.name,
        readme=state.readme,
        is_public=state.is_public,
        container_registry_auth_id=state.container.registry_auth_id,
        created_at=state.created_at,
        updated_at=state.updated_at,
        **container_fields_out(state.container),
    )


async def check_registry_auth(request: Request[Any, Any, Any], auth_id: str | None) -> None:
    """A template may only name one of its owner's own saved registry credentials."""
    if auth_id is None:
        return
    state: RegistryAuthState | None = await read_models.get(
        context_of(request).pool, PROJECTIONS["registry_auths"], auth_id
    )
    if state is None or state.deleted or state.owner_id != request.user.id:
        raise BadRequest(f"field `containerRegistryAuthId`: no registry credential {auth_id!r}")


def visible_to(state: TemplateState | None, user_id: str) -> TemplateState:
    if state is None or state.deleted or not (state.is_public or state.owner_id == user_id):
        raise NotFound("template not found")
    return state


class TemplateController(Controller):
    path = "/templates"
    tags = ["templates"]

    @get("/", summary="List your templates and the built-in ones (paged: see `Link`)")
    async def list_templates(
        self,
        request: Request[Any, Any, Any],
        page: Page,
    ) -> Response[list[TemplateOut]]:
        ctx = context_of(request)

        async def load() -> ListPage:
            positions, states = await read_models.list_page(
                ctx.pool, TEMPLATES, request.user.id, page, include_public=True
            )
            return page.of_rows(positions, [view(s) for s in states])

        key = f"{request.user.id}\n{page.limit}\n{page.cursor or ''}"
        return page.response(request, await ctx.cache.get_or_load(TEMPLATES.name, key, load))

    @post("/", status_code=201, summary="Create a template")
    async def create_template(
        self, request: Request[Any, Any, Any], data: JSONBody[TemplateIn]
    ) -> TemplateOut:
        ctx = context_of(request)
        check_image_name(data.image_name)
        await check_registry_auth(request, data.container_registry_auth_id)
        command = CreateTemplate(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            container=data.container_config(data.container_registry_auth_id),
            readme=data.readme,
        )
        await ctx.quotas.check_templates(request.user.id)
        return view(await ctx.execute(TEMPLATES, new_resource_id(request), command, request))

    @get("/{template_id:str}", summary="Get a template")
    async def get_template(
        self, request: Request[Any, Any, Any], template_id: FromPath[str]
    ) -> TemplateOut:
        ctx = context_of(request)
        state = await read_models.get(ctx.pool, TEMPLATES, template_id)
        return view(visible_to(state, request.user.id))

    @patch("/{template_id:str}", summary="Change a template")
    async def update_template(
        self,
        request: Request[Any, Any, Any],
        template_id: FromPath[str],
        data: JSONBody[TemplatePatch],
    ) -> TemplateOut:
        ctx = context_of(request)
        read_models.checked_id(template_id, "template")
        check_image_name(data.image_name)
        await check_registry_auth(request, data.container_registry_auth_id)
        command = UpdateTemplate(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            container=data.container_changes(
                volume_mount_path=data.volume_mount_path,
                registry_auth_id=data.container_registry_auth_id,
            ),
            readme=data.readme,
        )
        return view(await ctx.execute(TEMPLATES, template_id, command, request))

    @delete("/{template_id:str}", status_code=204, summary="Delete a template")
    async def delete_template(
        self, request: Request[Any, Any, Any], template_id: FromPath[str]
    ) -> None:
        ctx = context_of(request)
        read_models.checked_id(template_id, "template")
        await ctx.execute(
            TEMPLATES,
            template_id,
            DeleteTemplate(actor=request.user.id, at=datetime.now(UTC)),
            request,
        )
