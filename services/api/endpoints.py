"""/endpoints: serverless endpoints (the seed's routes). An endpoint runs its template's container
on workers with GPUs of the listed types, scaled between `workersMin` and `workersMax`; its jobs are
under /endpoints/:id/ (services/api/jobs.py).

The api resolves the container here, when the endpoint is created and whenever `templateId` or
`env` is sent: the template's container with the endpoint's env over the template's. A resolved
container that differs from the stored one is a new `version` (PATCH with the same `templateId`
picks up a template changed since). Every bound is a 400 naming its field; the decider checks the
same bounds again (services/deciders/endpoint.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from events.container import ContainerConfig
from events.endpoint import EndpointSettings
from ledger.money import MICROS_PER_USD
from ledger.rate_card import gpu_type_ids
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.container_fields import Env
from services.api.context import context_of
from services.api.endpoint_activity import Activity, activity_of
from services.api.pagination import Page
from services.api.request_ids import new_resource_id
from services.api.spending import ensure_affordable
from services.api.templates import TEMPLATES, Name
from services.datacenters import DATACENTERS
from services.deciders.endpoint import (
    DEFAULT_EXECUTION_TIMEOUT_MS,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_SCALER_VALUE,
    EXECUTION_TIMEOUT_RANGE_MS,
    IDLE_TIMEOUT_RANGE,
    MAX_GPU_COUNT,
    MAX_SCALER_VALUE,
    MAX_WORKERS,
    NOT_FOUND,
    CreateEndpoint,
    DeleteEndpoint,
    EndpointState,
    UpdateEndpoint,
    settings_problem,
)
from services.deciders.template import TemplateState
from services.deciders.volume import VolumeState
from services.errors import BadRequest, NotFound
from services.worker_env import reserved

ENDPOINTS = PROJECTIONS["endpoints"]
VOLUMES = PROJECTIONS["volumes"]

GpuIds = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=1024,
        description="A GPU type, or several comma-separated in order of preference",
    ),
]
GpuCount = Annotated[int, Meta(ge=1, le=MAX_GPU_COUNT)]
Workers = Annotated[int, Meta(ge=0, le=MAX_WORKERS)]
IdleTimeout = Annotated[int, Meta(ge=IDLE_TIMEOUT_RANGE[0], le=IDLE_TIMEOUT_RANGE[1])]
ScalerType = Literal["QUEUE_DELAY", "REQUEST_COUNT"]
ScalerValue = Annotated[int, Meta(ge=1, le=MAX_SCALER_VALUE)]
ExecutionTimeout = Annotated[
    int, Meta(ge=EXECUTION_TIMEOUT_RANGE_MS[0], le=EXECUTION_TIMEOUT_RANGE_MS[1])
]
ResourceId = Annotated[str, Meta(min_length=1, max_length=128)]


def _check_env(env: dict[str, str] | None) -> None:
    for name in env or {}:
        if reserved(name):
            raise ValueError(
                f"field `env`: {name} is set by the platform for every worker and cannot be"
                " set on an endpoint"
            )


class EndpointIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name
    template_id: ResourceId
    gpu_ids: GpuIds
    gpu_count: GpuCount = 1
    workers_min: Workers = 0
    workers_max: Workers = 3
    idle_timeout: IdleTimeout = DEFAULT_IDLE_TIMEOUT_S
    scaler_type: ScalerType = "QUEUE_DELAY"
    scaler_value: ScalerValue = DEFAULT_SCALER_VALUE
    execution_timeout_ms: ExecutionTimeout = DEFAULT_EXECUTION_TIMEOUT_MS
    data_center_id: Annotated[str, Meta(max_length=64)] | None = None
    network_volume_id: ResourceId | None = None
    env: Env = {}

    def __post_init__(self) -> None:
        if self.workers_min > self.workers_max:
            raise ValueError(
                f"field `workersMin`: {self.workers_min} is above workersMax ({self.workers_max})"
            )
        _check_env(self.env)


class EndpointPatch(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Only what is sent changes."""

    name: Name | None = None
    template_id: ResourceId | None = None
    gpu_ids: GpuIds | None = None
    gpu_count: GpuCount | None = None
    workers_min: Workers | None = None
    workers_max: Workers | None = None
    idle_timeout: IdleTimeout | None = None
    scaler_type: ScalerType | None = None
    scaler_value: ScalerValue | None = None
    execution_timeout_ms: ExecutionTimeout | None = None
    data_center_id: Annotated[str, Meta(max_length=64)] | None = None
    network_volume_id: ResourceId | None = None
    env: Env | None = None

    def __post_init__(self) -> None:
        _check_env(self.env)


class EndpointOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    template_id: str
    gpu_ids: str
    gpu_count: int
    workers_min: int
    workers_max: int
    idle_timeout: int
    scaler_type: str
    scaler_value: int
    execution_timeout_ms: int
    data_center_id: str | None
    network_volume_id: str | None
    env: dict[str, str]
    # Grows when the template or env changes: workers of an older version are replaced.
    version: int
    workers_running: int
    workers_idle: int
    workers_initializing: int
    workers_unhealthy: int
    # Why workers are unhealthy (what they reported), if any are.
    unhealthy_reasons: list[str]
    jobs_in_queue: int
    jobs_in_progress: int
    # Why billing holds it at zero workers (its owner's balance or budget), if it does.
    suspended_reason: str | None = None
    # Its workers' GPU time so far (the ledger bills workers, never jobs).
    cost_to_date: float
    cost_to_date_micros: int
    created_at: datetime
    updated_at: datetime


def view(state: EndpointState, activity: Activity) -> EndpointOut:
    s = state.settings
    return EndpointOut(
        id=state.id,
        name=state.name,
        template_id=state.template_id,
        gpu_ids=",".join(s.gpu_ids),
        gpu_count=s.gpu_count,
        workers_min=s.workers_min,
        workers_max=s.workers_max,
        idle_timeout=s.idle_timeout_s,
        scaler_type=s.scaler_type,
        scaler_value=s.scaler_value,
        execution_timeout_ms=s.execution_timeout_ms,
        data_center_id=s.datacenter_id,
        network_volume_id=s.network_volume_id,
        env=state.env,
        version=state.config_version,
        workers_running=activity.workers_running,
        workers_idle=activity.workers_idle,
        workers_initializing=activity.workers_initializing,
        workers_unhealthy=activity.workers_unhealthy,
        unhealthy_reasons=activity.unhealthy_reasons,
        jobs_in_queue=activity.in_queue,
        jobs_in_progress=activity.in_progress,
        suspended_reason=state.suspended,
        cost_to_date=activity.cost_to_date_micros / MICROS_PER_USD,
        cost_to_date_micros=activity.cost_to_date_micros,
        created_at=state.created_at,
        updated_at=state.updated_at,
    )


async def views(request: Request[Any, Any, Any], states: list[EndpointState]) -> list[EndpointOut]:
    ctx = context_of(request)
    activity = await activity_of(ctx.pool, states, ctx.settings.worker_lost_after_s)
    return [view(s, activity[s.id]) for s in states]


def owned(state: EndpointState | None, user_id: str) -> EndpointState:
    if state is None or state.deleted or state.owner_id != user_id:
        raise NotFound(NOT_FOUND)
    return state


async def owned_endpoint(request: Request[Any, Any, Any], endpoint_id: str) -> EndpointState:
    # Every job call reads its endpoint, which changes seldom: kept while the endpoints read
    # model has not moved (services/api/read_cache.py), the one PostgreSQL read per job it
    # was is gone from the hot path.
    ctx = context_of(request)

    async def load() -> EndpointState | None:
        state: EndpointState | None = await read_models.get(ctx.pool, ENDPOINTS, endpoint_id)
        return state

    state = await ctx.rows.get_or_load(ENDPOINTS.name, endpoint_id, load)
    return owned(state, request.user.id)


def parse_gpu_ids(value: str) -> list[str]:
    ids = [part.strip() for part in value.split(",")]
    if any(not part for part in ids):
        raise BadRequest("field `gpuIds`: an empty GPU type in the list")
    known = gpu_type_ids()
    for gpu in ids:
        if gpu not in known:
            raise BadRequest(f"field `gpuIds`: unknown GPU type {gpu!r}; known: {', '.join(known)}")
    return ids


async def _container(
    request: Request[Any, Any, Any], template_id: str, env: dict[str, str]
) -> ContainerConfig:
    template: TemplateState | None = await read_models.get(
        context_of(request).pool, TEMPLATES, template_id
    )
    if (
        template is None
        or template.deleted
        or not (template.is_public or template.owner_id == request.user.id)
    ):
        raise BadRequest(f"field `templateId`: no template {template_id!r}")
    made = template.container
    return msgspec.structs.replace(made, env={**made.env, **env})


async def _check_placement(
    request: Request[Any, Any, Any], datacenter_id: str | None, volume_id: str | None
) -> None:
    if datacenter_id is not None and datacenter_id not in DATACENTERS:
        raise BadRequest(
            f"field `dataCenterId`: unknown data center {datacenter_id!r};"
            f" known: {', '.join(DATACENTERS)}"
        )
    if volume_id is None:
        return
    volume: VolumeState | None = await read_models.get(context_of(request).pool, VOLUMES, volume_id)
    if volume is None or volume.owner_id != request.user.id or volume.status == "DELETED":
        raise BadRequest(f"field `networkVolumeId`: no volume {volume_id!r}")
    if datacenter_id is not None and datacenter_id != volume.datacenter_id:
        raise BadRequest(
            f"field `networkVolumeId`: volume {volume.id} is in {volume.datacenter_id},"
            f" not in the endpoint's data center {datacenter_id}"
        )


class EndpointController(Controller):
    path = "/endpoints"
    tags = ["endpoints"]

    @get("/", summary="List your serverless endpoints (paged: see `Link`)")
    async def list_endpoints(
        self, request: Request[Any, Any, Any], page: Page
    ) -> Response[list[EndpointOut]]:
        positions, states = await read_models.list_page(
            context_of(request).pool, ENDPOINTS, request.user.id, page
        )
        return page.response(request, page.of_rows(positions, await views(request, states)))

    @post("/", status_code=201, summary="Create a serverless endpoint")
    async def create_endpoint(
        self, request: Request[Any, Any, Any], data: JSONBody[EndpointIn]
    ) -> EndpointOut:
        ctx = context_of(request)
        settings = EndpointSettings(
            gpu_ids=parse_gpu_ids(data.gpu_ids),
            gpu_count=data.gpu_count,
            workers_min=data.workers_min,
            workers_max=data.workers_max,
            idle_timeout_s=data.idle_timeout,
            scaler_type=data.scaler_type,
            scaler_value=data.scaler_value,
            execution_timeout_ms=data.execution_timeout_ms,
            datacenter_id=data.data_center_id,
            network_volume_id=data.network_volume_id,
        )
        await _check_placement(request, data.data_center_id, data.network_volume_id)
        await ensure_affordable(ctx.pool, request.user.id, 0, hourly_limit=False)
        command = CreateEndpoint(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            template_id=data.template_id,
            env=data.env,
            container=await _container(request, data.template_id, data.env),
            settings=settings,
        )
        state = await ctx.execute(ENDPOINTS, new_resource_id(request), command, request)
        return (await views(request, [state]))[0]

    @get("/{endpoint_id:str}", summary="Get an endpoint, with its workers and jobs right now")
    async def get_endpoint(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str]
    ) -> EndpointOut:
        return (await views(request, [await owned_endpoint(request, endpoint_id)]))[0]

    @patch("/{endpoint_id:str}", summary="Change an endpoint (template or env: a new version)")
    async def update_endpoint(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        data: JSONBody[EndpointPatch],
    ) -> EndpointOut:
        ctx = context_of(request)
        current = await owned_endpoint(request, endpoint_id)
        s = current.settings
        settings = EndpointSettings(
            gpu_ids=parse_gpu_ids(data.gpu_ids) if data.gpu_ids is not None else s.gpu_ids,
            gpu_count=_or(data.gpu_count, s.gpu_count),
            workers_min=_or(data.workers_min, s.workers_min),
            workers_max=_or(data.workers_max, s.workers_max),
            idle_timeout_s=_or(data.idle_timeout, s.idle_timeout_s),
            scaler_type=_or(data.scaler_type, s.scaler_type),
            scaler_value=_or(data.scaler_value, s.scaler_value),
            execution_timeout_ms=_or(data.execution_timeout_ms, s.execution_timeout_ms),
            datacenter_id=_or(data.data_center_id, s.datacenter_id),
            network_volume_id=_or(data.network_volume_id, s.network_volume_id),
        )
        if (problem := settings_problem(settings)) is not None:
            raise BadRequest(problem)
        if data.data_center_id is not None or data.network_volume_id is not None:
            await _check_placement(request, settings.datacenter_id, settings.network_volume_id)
        container = None
        if data.template_id is not None or data.env is not None:
            template_id = _or(data.template_id, current.template_id)
            container = await _container(request, template_id, _or(data.env, current.env))
        command = UpdateEndpoint(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            template_id=data.template_id,
            env=data.env,
            container=container,
            settings=settings,
        )
        state = await ctx.execute(ENDPOINTS, current.id, command, request)
        return (await views(request, [state]))[0]

    @delete(
        "/{endpoint_id:str}",
        status_code=204,
        summary="Delete an endpoint: its queued and running jobs are CANCELLED",
    )
    async def delete_endpoint(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str]
    ) -> None:
        ctx = context_of(request)
        command = DeleteEndpoint(actor=request.user.id, at=datetime.now(UTC))
        await ctx.execute(
            ENDPOINTS, read_models.checked_id(endpoint_id, "endpoint"), command, request
        )


def _or(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value
