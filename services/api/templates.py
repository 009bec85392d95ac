"""/templates: the user's own templates plus the built-in public ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from msgspec import Meta

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import ListPage, Page
from services.api.request_ids import new_resource_id
from services.container_input import (
    MAX_MOUNT_PATH_LENGTH,
    MAX_PORTS,
    mount_path_problem,
    ports_problem,
)
from services.deciders.registry_auth import RegistryAuthState
from services.deciders.template import (
    MAX_DISK_GB,
    CreateTemplate,
    DeleteTemplate,
    TemplateState,
    UpdateTemplate,
)
from services.errors import BadRequest, NotFound
from services.images import reference
from services.images.registry_policy import RegistryPolicy, RegistryRefused

TEMPLATES = PROJECTIONS["templates"]

Name = Annotated[str, Meta(min_length=1, max_length=128)]
Image = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
StartCmd = Annotated[str, Meta(max_length=4096)]
ContainerDisk = Annotated[int, Meta(ge=1, le=MAX_DISK_GB)]
VolumeDisk = Annotated[int, Meta(ge=0, le=MAX_DISK_GB)]
MountPath = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_MOUNT_PATH_LENGTH,
        description="absolute and normalised, no ':', not under a system path such as /etc",
    ),
]
EnvName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, Meta(max_length=4096)]
Env = Annotated[dict[EnvName, EnvValue], Meta(max_length=64)]
Port = Annotated[
    str, Meta(min_length=1, max_length=16, description="NUMBER/PROTOCOL: 1-65535, http|tcp|udp")
]
Ports = Annotated[list[Port], Meta(max_length=MAX_PORTS, description="no port twice")]
Readme = Annotated[str, Meta(max_length=65536)]


def check_container_input(volume_mount_path: str | None, ports: list[str] | None) -> None:
    """For the `__post_init__` of request bodies: msgspec turns the ValueError into a 400."""
    if volume_mount_path is not None and (problem := mount_path_problem(volume_mount_path)):
        raise ValueError(f"field `volumeMountPath`: {problem}")
    if ports is not None and (problem := ports_problem(ports)):
        raise ValueError(f"field `ports`: {problem}")


class TemplateIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name
    image_name: Image
    docker_start_cmd: StartCmd | None = None
    container_disk_in_gb: ContainerDisk = 20
    volume_in_gb: VolumeDisk = 0
    volume_mount_path: MountPath = "/workspace"
    env: Env = {}
    ports: Ports = []
    readme: Readme = ""
    container_registry_auth_id: Annotated[str, Meta(max_length=128)] | None = None

    def __post_init__(self) -> None:
        check_container_input(self.volume_mount_path, self.ports)


class TemplatePatch(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name | None = None
    image_name: Image | None = None
    docker_start_cmd: StartCmd | None = None
    container_disk_in_gb: ContainerDisk | None = None
    volume_in_gb: VolumeDisk | None = None
    volume_mount_path: MountPath | None = None
    env: Env | None = None
    ports: Ports | None = None
    readme: Readme | None = None
    container_registry_auth_id: Annotated[str, Meta(max_length=128)] | None = None

    def __post_init__(self) -> None:
        check_container_input(self.volume_mount_path, self.ports)


class TemplateOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    image_name: str
    docker_start_cmd: str | None
    container_disk_in_gb: int
    volume_in_gb: int
    volume_mount_path: str
    env: dict[str, str]
    ports: list[str]
    readme: str
    is_public: bool
    container_registry_auth_id: str | None
    created_at: datetime
    updated_at: datetime


def view(state: TemplateState) -> TemplateOut:
    return TemplateOut(
        id=state.id,
        name=state.name,
        image_name=state.image_name,
        docker_start_cmd=state.docker_start_cmd,
        container_disk_in_gb=state.container_disk_in_gb,
        volume_in_gb=state.volume_in_gb,
        volume_mount_path=state.volume_mount_path,
        env=state.env,
        ports=state.ports,
        readme=state.readme,
        is_public=state.is_public,
        container_registry_auth_id=state.container_registry_auth_id,
        created_at=state.created_at,
        updated_at=state.updated_at,
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


def check_image_name(image_name: str | None) -> None:
    """An image by name (never an image ID) on a registry the hosts may contact (issue 7)."""
    if image_name is None:
        return
    try:
        RegistryPolicy.from_env().check(reference.parse(image_name))
    except (reference.InvalidReference, RegistryRefused) as exc:
        raise BadRequest(f"field `imageName`: {exc}") from None


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
        self, request: Request[Any, Any, Any], data: TemplateIn
    ) -> TemplateOut:
        ctx = context_of(request)
        check_image_name(data.image_name)
        await check_registry_auth(request, data.container_registry_auth_id)
        command = CreateTemplate(
            actor=request.user.id, at=datetime.now(UTC), **msgspec.structs.asdict(data)
        )
        await ctx.quotas.check_templates(request.user.id)
        return view(await ctx.execute(TEMPLATES, new_resource_id(request), command, request))

    @get("/{template_id:str}", summary="Get a template")
    async def get_template(self, request: Request[Any, Any, Any], template_id: str) -> TemplateOut:
        ctx = context_of(request)
        state = await read_models.get(ctx.pool, TEMPLATES, template_id)
        return view(visible_to(state, request.user.id))

    @patch("/{template_id:str}", summary="Change a template")
    async def update_template(
        self, request: Request[Any, Any, Any], template_id: str, data: TemplatePatch
    ) -> TemplateOut:
        ctx = context_of(request)
        read_models.checked_id(template_id, "template")
        check_image_name(data.image_name)
        await check_registry_auth(request, data.container_registry_auth_id)
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        command = UpdateTemplate(actor=request.user.id, at=datetime.now(UTC), **changes)
        return view(await ctx.execute(TEMPLATES, template_id, command, request))

    @delete("/{template_id:str}", status_code=204, summary="Delete a template")
    async def delete_template(self, request: Request[Any, Any, Any], template_id: str) -> None:
        ctx = context_of(request)
        read_models.checked_id(template_id, "template")
        await ctx.execute(
            TEMPLATES,
            template_id,
            DeleteTemplate(actor=request.user.id, at=datetime.now(UTC)),
            request,
        )
