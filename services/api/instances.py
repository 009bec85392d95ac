"""/instances: rent GPUs as containers; start, stop, restart, change and terminate them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from events.container import ContainerConfig
from ledger.consumer import CHECKPOINT as LEDGER_CHECKPOINT
from ledger.money import MICROS_PER_USD
from ledger.rate_card import first_resources, gpu_type_ids, in_force
from ledger.usage import instance_usage
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.account import current_user
from services.api.container_fields import (
    ContainerDisk,
    ContainerFieldsOut,
    ContainerFieldsPatch,
    Env,
    MountPath,
    Ports,
    VolumeDisk,
    check_container_input,
    check_image_name,
    container_fields_out,
)
from services.api.context import context_of
from services.api.instance_proxy.routing import proxy_urls
from services.api.pagination import ListPage, Page
from services.api.request_ids import is_retry, new_resource_id
from services.api.spending import costs_to_date, ensure_affordable, hourly_cost
from services.api.templates import TEMPLATES, Name
from services.datacenters import DATACENTERS
from services.deciders.host import HostState
from services.deciders.instance import (
    STARTABLE,
    InstanceState,
    RestartInstance,
    StopInstance,
    TerminateInstance,
    UpdateInstance,
)
from services.deciders.template import TemplateState
from services.deciders.volume import VolumeState
from services.errors import BadRequest, NotFound, ServiceUnavailable
from services.processes.placement_service import PlaceInstance, StartPlacedInstance

INSTANCES = PROJECTIONS["instances"]
HOSTS = PROJECTIONS["hosts"]
VOLUMES = PROJECTIONS["volumes"]

CloudType = Literal["SECURE", "COMMUNITY"]
GpuCount = Annotated[int, Meta(ge=1, le=8)]


class InstanceIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name
    gpu_type_id: Annotated[str, Meta(min_length=1, max_length=128)]
    template_id: Annotated[str, Meta(min_length=1, max_length=128)]
    cloud_type: CloudType = "SECURE"
    gpu_count: GpuCount = 1
    # Overrides of the template's container (env is merged into the template's).
    env: Env | None = None
    ports: Ports | None = None
    container_disk_in_gb: ContainerDisk | None = None
    volume_in_gb: VolumeDisk | None = None
    volume_mount_path: MountPath | None = None
    data_center_id: Annotated[str, Meta(max_length=64)] | None = None
    network_volume_id: Annotated[str, Meta(max_length=128)] | None = None

    def __post_init__(self) -> None:
        check_container_input(self.volume_mount_path, self.ports)


class InstancePatch(ContainerFieldsPatch, kw_only=True):
    name: Name | None = None


class InstanceOut(ContainerFieldsOut, kw_only=True):
    id: str
    name: str
    status: str
    desired_status: str
    actions: list[str]
    gpu_type_id: str
    gpu_count: int
    # The container's CPU and memory limits: the rate card's per-GPU figures times gpuCount.
    vcpu_count: int
    memory_in_gb: int
    cloud_type: str
    data_center_id: str
    host_id: str
    template_id: str
    network_volume_id: str | None
    # Its GPUs, per hour (at the price it was created with).
    cost_per_hr: float
    cost_per_hr_micros: int
    # Its disks while it runs, per hour (its own volume costs more while it is stopped).
    disk_cost_per_hr: float
    disk_cost_per_hr_micros: int
    # What it has cost so far (charged, and owed by what runs now).
    cost_to_date: float
    cost_to_date_micros: int
    rate_card_version: str
    created_at: datetime
    last_status_change: datetime
    failure_reason: str | None
    stop_reason: str | None
    exit_code: int | None
    host_lost: bool
    # How to reach it: each `N/http` port through the api's proxy (only its owner gets
    # through, and only while it is RUNNING) ...
    urls: list[str]
    # ... and, while it runs, the host's public address with the host port of each `N/tcp` port
    # (`{"22": 41022}`; a udp port as "53/udp"), as RunPod's API shows them.
    public_ip: str | None
    port_mappings: dict[str, int] | None


def public_base_url(request: Request[Any, Any, Any] | None) -> str:
    """Where the client reached the api (the proxy's URLs start there): GPUWORKER_PUBLIC_URL
    when the operator set it, else the request's own scheme and host."""
    if request is None:
        return ""
    proxy = getattr(request.app.state, "instance_proxy", None)
    configured = proxy.settings.public_url if proxy else None
    return configured or str(request.base_url)


def _reach(
    state: InstanceState, request: Request[Any, Any, Any] | None
) -> tuple[list[str], str | None, dict[str, int] | None]:
    proxy = getattr(request.app.state, "instance_proxy", None) if request else None
    http = [int(p.partition("/")[0]) for p in state.container.ports if p.endswith("/http")]
    urls = proxy_urls(
        state.id, http, public_base_url(request), proxy.settings.domain if proxy else None
    )
    if state.status != "RUNNING":
        return urls, None, None
    mappings = {
        p.port.removesuffix("/tcp"): p.host_port
        for p in state.published_ports
        if not p.port.endswith("/http")
    }
    return urls, state.public_ip if mappings else None, mappings


def disk_cost_per_hour(state: InstanceState) -> int:
    """Its disks while it runs, at the rate card's storage prices."""
    return hourly_cost(
        instance_usage(
            running=True,
            host_lost=False,
            terminated=False,
            gpu_type_id=state.gpu_type_id,
            gpu_count=0,
            cloud_type=state.cloud_type,
            container_disk_gb=state.container.container_disk_in_gb,
            volume_gb=state.container.volume_in_gb,
            network_volume=state.network_volume_id is not None,
        ),
        state.created_at,
    )


def launch_container(made: ContainerConfig, data: InstanceIn) -> ContainerConfig:
    """The template's container (its image, command and registry credential included), with the
    body's overrides."""
    return msgspec.structs.replace(
        made,
        env={**made.env, **(data.env or {})},
        ports=data.ports if data.ports is not None else made.ports,
        container_disk_in_gb=data.container_disk_in_gb or made.container_disk_in_gb,
        volume_in_gb=data.volume_in_gb if data.volume_in_gb is not None else made.volume_in_gb,
        volume_mount_path=data.volume_mount_path or made.volume_mount_path,
    )


def launch_cost_per_hour(data: InstanceIn, container: ContainerConfig, at: datetime) -> int:
    """What an instance launched from `data` costs per hour while it runs: its GPUs at the price
    in force at `at`, and its disks (what a create must be able to afford; the console's
    estimate). 0 for a GPU type the rate card does not list."""
    gpu = in_force(at).gpu(data.gpu_type_id)
    if gpu is None:
        return 0
    disks = instance_usage(
        running=True,
        host_lost=False,
        terminated=False,
        gpu_type_id=gpu.id,
        gpu_count=0,
        cloud_type=data.cloud_type,
        container_disk_gb=container.container_disk_in_gb,
        volume_gb=container.volume_in_gb,
        network_volume=data.network_volume_id is not None,
    )
    return gpu.per_hour(data.cloud_type) * data.gpu_count + hourly_cost(disks, at)


def running_cost_per_hour(state: InstanceState) -> int:
    """Its GPUs at the price it was created with, and its disks."""
    return state.price_per_hour_micros * state.gpu_count + disk_cost_per_hour(state)


def view(
    state: InstanceState,
    request: Request[Any, Any, Any] | None = None,
    host_down: bool = False,
    cost_to_date: int = 0,
) -> InstanceOut:
    cost = state.price_per_hour_micros * state.gpu_count
    disks = disk_cost_per_hour(state)
    urls, public_ip, port_mappings = _reach(state, request)
    return InstanceOut(
        urls=urls,
        public_ip=public_ip,
        port_mappings=port_mappings,
        id=state.id,
        name=state.name,
        status=state.status,
        desired_status=state.desired_status,
        actions=state.actions,
        gpu_type_id=state.gpu_type_id,
        gpu_count=state.gpu_count,
        vcpu_count=state.vcpu_count,
        memory_in_gb=state.memory_in_gb,
        cloud_type=state.cloud_type,
        data_center_id=state.datacenter_id,
        host_id=state.host_id,
        template_id=state.template_id,
        network_volume_id=state.network_volume_id,
        cost_per_hr=cost / MICROS_PER_USD,
        cost_per_hr_micros=cost,
        disk_cost_per_hr=disks / MICROS_PER_USD,
        disk_cost_per_hr_micros=disks,
        cost_to_date=cost_to_date / MICROS_PER_USD,
        cost_to_date_micros=cost_to_date,
        rate_card_version=state.rate_card_version,
        created_at=state.created_at,
        last_status_change=state.last_status_change,
        failure_reason=state.failure_reason,
        stop_reason=state.stop_reason,
        exit_code=state.exit_code,
        host_lost=state.host_lost or host_down,
        **container_fields_out(state.container),
    )


async def views(request: Request[Any, Any, Any], states: list[InstanceState]) -> list[InstanceOut]:
    """Instances on a host that stopped heartbeating are shown as such (hostLost: true)."""
    pool = context_of(request).pool
    hosts: dict[str, HostState] = await read_models.get_many(
        pool, HOSTS, sorted({s.host_id for s in states})
    )
    costs = await costs_to_date(pool, [s.id for s in states], datetime.now(UTC))
    return [
        view(
            s,
            request,
            host_down=s.host_id in hosts and not hosts[s.host_id].available,
            cost_to_date=costs.get(s.id, 0),
        )
        for s in states
    ]


async def _until_attached(
    request: Request[Any, Any, Any], volume_id: str, instance_id: str
) -> None:
    """Read-your-writes for the volume too: its attach is another aggregate's event, so the
    instance's sequence says nothing about the volumes read model; look for it (bounded)."""
    ctx = context_of(request)
    deadline = asyncio.get_running_loop().time() + ctx.settings.read_your_writes_timeout_s
    while asyncio.get_running_loop().time() < deadline:
        volume: VolumeState | None = await read_models.get(ctx.pool, VOLUMES, volume_id)
        if volume is not None and instance_id in volume.attached:
            return
        await asyncio.sleep(0.02)


async def _created_before(
    request: Request[Any, Any, Any], instance_id: str
) -> InstanceState | None:
    """A retried create whose first attempt went through: its instance, as it is now (the checks
    below were for creating it, and it exists)."""
    state = await read_models.get(context_of(request).pool, INSTANCES, instance_id)
    if state is None or state.owner_id != request.user.id:
        return None
    found: InstanceState = state
    return found


def _mine(state: InstanceState | None, user_id: str) -> InstanceState:
    if state is None or state.status == "TERMINATED" or state.owner_id != user_id:
        raise NotFound("instance not found")
    return state


class InstanceController(Controller):
    path = "/instances"
    tags = ["instances"]

    @get("/", summary="List your instances (paged: see `Link`)")
    async def list_instances(
        self,
        request: Request[Any, Any, Any],
        page: Page,
    ) -> Response[list[InstanceOut]]:
        ctx = context_of(request)

        async def load() -> ListPage:
            positions, states = await read_models.list_page(
                ctx.pool, INSTANCES, request.user.id, page
            )
            return page.of_rows(positions, await views(request, states))

        key = f"{request.user.id}\n{page.limit}\n{page.cursor or ''}\n{public_base_url(request)}"
        # An instance's host (lost or not) and its cost to date are part of its view; the cost
        # moves every second it runs, and is billed by the second: a page is good for its second.
        listed = await ctx.cache.get_or_load(
            (INSTANCES.name, HOSTS.name, LEDGER_CHECKPOINT), key, load, moment=int(time.time())
        )
        return page.response(request, listed)

    @post("/", status_code=201, summary="Rent a GPU instance")
    async def create_instance(
        self, request: Request[Any, Any, Any], data: JSONBody[InstanceIn]
    ) -> InstanceOut:
        ctx = context_of(request)
        now = datetime.now(UTC)
        card = in_force(now)
        gpu = card.gpu(data.gpu_type_id)
        if gpu is None:
            raise BadRequest(
                f"field `gpuTypeId`: unknown GPU type {data.gpu_type_id!r};"
                f" known: {', '.join(gpu_type_ids())}"
            )
        resources = gpu.resources or first_resources(gpu.id)
        if resources is None:
            raise ServiceUnavailable(f"the rate card lists no vCPU and RAM for {gpu.id} yet")
        if data.data_center_id is not None and data.data_center_id not in DATACENTERS:
            raise BadRequest(
                f"field `dataCenterId`: unknown data center {data.data_center_id!r};"
                f" known: {', '.join(DATACENTERS)}"
            )
        if data.network_volume_id is not None:
            volume: VolumeState | None = await read_models.get(
                ctx.pool, VOLUMES, data.network_volume_id
            )
            if volume is None or volume.owner_id != request.user.id or volume.status == "DELETED":
                raise BadRequest(f"field `networkVolumeId`: no volume {data.network_volume_id!r}")
            if data.data_center_id is not None and data.data_center_id != volume.datacenter_id:
                raise BadRequest(
                    f"field `networkVolumeId`: volume {volume.id} is in {volume.datacenter_id},"
                    f" not in the requested data center {data.data_center_id}"
                )
        template: TemplateState | None = await read_models.get(
            ctx.pool, TEMPLATES, data.template_id
        )
        if (
            template is None
            or template.deleted
            or not (template.is_public or template.owner_id == request.user.id)
        ):
            raise BadRequest(f"field `templateId`: no template {data.template_id!r}")
        container = launch_container(template.container, data)
        # The instance's own disks (a network volume replaces its volume) must fit its host.
        need_gb = container.container_disk_in_gb + (
            0 if data.network_volume_id else container.volume_in_gb
        )
        without_room = await ctx.storage.hosts_without_room(need_gb)
        command = PlaceInstance(
            actor=request.user.id,
            at=now,
            name=data.name,
            gpu_type_id=gpu.id,
            gpu_count=data.gpu_count,
            cloud_type=data.cloud_type,
            datacenter_id=data.data_center_id,
            template_id=template.id,
            container=container,
            network_volume_id=data.network_volume_id,
            price_per_hour_micros=gpu.per_hour(data.cloud_type),
            rate_card_version=card.id,
            vcpu_count=resources.vcpu_per_gpu * data.gpu_count,
            memory_in_gb=resources.ram_gb_per_gpu * data.gpu_count,
            hosts_without_disk=without_room,
            ssh_public_keys=(await current_user(request)).ssh_public_keys,
        )
        instance_id = new_resource_id(request)
        if is_retry(request) and (done := await _created_before(request, instance_id)):
            return view(done, request)
        await ensure_affordable(
            ctx.pool, request.user.id, launch_cost_per_hour(data, container, now)
        )
        async with ctx.quotas.held(request.user.id) as usage:
            await usage.check_gpus(data.gpu_count)
            state = await ctx.execute(INSTANCES, instance_id, command, request, via="placement")
        if state.network_volume_id:
            await _until_attached(request, state.network_volume_id, state.id)
        return view(state, request)

    @get("/{instance_id:str}", summary="Get an instance")
    async def get_instance(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str]
    ) -> InstanceOut:
        ctx = context_of(request)
        state = await read_models.get(ctx.pool, INSTANCES, instance_id)
        return (await views(request, [_mine(state, request.user.id)]))[0]

    @patch("/{instance_id:str}", summary="Rename, change image/env/ports, or grow disks")
    async def update_instance(
        self,
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
        data: JSONBody[InstancePatch],
    ) -> InstanceOut:
        ctx = context_of(request)
        check_image_name(data.image_name)
        command = UpdateInstance(
            actor=request.user.id,
            at=datetime.now(UTC),
            name=data.name,
            container=data.container_changes(),
        )
        return view(
            await ctx.execute(
                INSTANCES, read_models.checked_id(instance_id, "instance"), command, request
            ),
            request,
        )

    @delete("/{instance_id:str}", status_code=204, summary="Terminate an instance")
    async def delete_instance(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str]
    ) -> None:
        ctx = context_of(request)
        command = TerminateInstance(actor=request.user.id, at=datetime.now(UTC))
        await ctx.execute(
            INSTANCES, read_models.checked_id(instance_id, "instance"), command, request
        )

    @post("/{instance_id:str}/start", status_code=200, summary="Start a stopped instance")
    async def start_instance(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str]
    ) -> InstanceOut:
        ctx = context_of(request)
        command = StartPlacedInstance(
            actor=request.user.id,
            at=datetime.now(UTC),
            # The account's keys as they are now: a change since the last start reaches it.
            ssh_public_keys=(await current_user(request)).ssh_public_keys,
        )
        instance_id = read_models.checked_id(instance_id, "instance")
        async with ctx.quotas.held(request.user.id) as usage:
            current = _mine(
                await read_models.get(ctx.pool, INSTANCES, instance_id), request.user.id
            )
            # Only a start that would take GPUs counts (any other is refused by the decider).
            if current.status in STARTABLE:
                await usage.check_gpus(current.gpu_count)
                # Its own volume disk is already billed (at the stopped rate) while it is stopped.
                await ensure_affordable(ctx.pool, request.user.id, running_cost_per_hour(current))
            state = await ctx.execute(INSTANCES, instance_id, command, request, via="placement")
        return view(state, request)

    @post("/{instance_id:str}/stop", status_code=200, summary="Stop a running instance")
    async def stop_instance(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str]
    ) -> InstanceOut:
        ctx = context_of(request)
        command = StopInstance(actor=request.user.id, at=datetime.now(UTC))
        return view(
            await ctx.execute(
                INSTANCES, read_models.checked_id(instance_id, "instance"), command, request
            ),
            request,
        )

    @post("/{instance_id:str}/restart", status_code=200, summary="Restart a running instance")
    async def restart_instance(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str]
    ) -> InstanceOut:
        ctx = context_of(request)
        command = RestartInstance(actor=request.user.id, at=datetime.now(UTC))
        return view(
            await ctx.execute(
                INSTANCES, read_models.checked_id(instance_id, "instance"), command, request
            ),
            request,
        )
