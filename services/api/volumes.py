"""/volumes: network storage volumes in a data center, mounted by instances, grow-only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from ledger.money import MICROS_PER_USD
from ledger.rate_card import in_force
from ledger.usage import ONE_TB_GB, volume_usage
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import Page
from services.api.request_ids import is_retry, new_resource_id
from services.api.spending import costs_to_date, ensure_affordable, hourly_cost
from services.api.templates import Name
from services.datacenters import DATACENTERS
from services.deciders.host import HostState
from services.deciders.volume import (
    MAX_SIZE_GB,
    MIN_SIZE_GB,
    CreateVolume,
    DeleteVolume,
    UpdateVolume,
    VolumeState,
)
from services.errors import BadRequest, Conflict, NotFound

VOLUMES = PROJECTIONS["volumes"]
HOSTS = PROJECTIONS["hosts"]

Size = Annotated[int, Meta(ge=MIN_SIZE_GB, le=MAX_SIZE_GB)]


class VolumeIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name
    size: Size
    data_center_id: Annotated[str, Meta(min_length=1, max_length=64)]


class VolumePatch(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    name: Name | None = None
    size: Size | None = None


class VolumeOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    size: int
    data_center_id: str
    status: str
    created_at: datetime
    # Its size at the rate card's prices (the first TB, and what is above it), per 30-day month.
    cost_per_month: float
    cost_per_month_micros: int
    cost_to_date: float
    cost_to_date_micros: int
    attached_instances: list[str]
    failure_reason: str | None


class VolumeDeletedOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    status: str
    message: str


def monthly_cost(size_gb: int, at: datetime) -> int:
    storage = in_force(at).storage
    first = min(size_gb, ONE_TB_GB)
    return storage.volume_per_gb_month * first + storage.volume_above_1tb_per_gb_month * (
        size_gb - first
    )


def view(state: VolumeState, cost_to_date: int = 0) -> VolumeOut:
    cost = monthly_cost(state.size_gb, state.created_at)
    return VolumeOut(
        id=state.id,
        name=state.name,
        size=state.size_gb,
        data_center_id=state.datacenter_id,
        status=state.status,
        created_at=state.created_at,
        cost_per_month=cost / MICROS_PER_USD,
        cost_per_month_micros=cost,
        cost_to_date=cost_to_date / MICROS_PER_USD,
        cost_to_date_micros=cost_to_date,
        attached_instances=list(state.attached),
        failure_reason=state.failure_reason,
    )


def _mine(state: VolumeState | None, user_id: str) -> VolumeState:
    if state is None or state.status == "DELETED" or state.owner_id != user_id:
        raise NotFound("volume not found")
    return state


class VolumeController(Controller):
    path = "/volumes"
    tags = ["volumes"]

    @get("/", summary="List your network volumes (paged: see `Link`)")
    async def list_volumes(
        self,
        request: Request[Any, Any, Any],
        page: Page,
    ) -> Response[list[VolumeOut]]:
        pool = context_of(request).pool
        positions, states = await read_models.list_page(pool, VOLUMES, request.user.id, page)
        costs = await costs_to_date(pool, [s.id for s in states], datetime.now(UTC))
        views = [view(s, costs.get(s.id, 0)) for s in states]
        return page.response(request, page.of_rows(positions, views))

    @post("/", status_code=201, summary="Create a network volume")
    async def create_volume(
        self, request: Request[Any, Any, Any], data: JSONBody[VolumeIn]
    ) -> VolumeOut:
        ctx = context_of(request)
        if data.data_center_id not in DATACENTERS:
            raise BadRequest(
                f"field `dataCenterId`: unknown data center {data.data_center_id!r};"
                f" known: {', '.join(DATACENTERS)}"
            )
        hosts: list[HostState] = await read_models.list_visible(ctx.pool, HOSTS, None)
        storage = sorted(
            (h for h in hosts if h.datacenter_id == data.data_center_id and h.available),
            key=lambda h: h.id,
        )
        if not storage:
            raise Conflict(
                f"no storage host is available in {data.data_center_id} right now;"
                " choose another data center or retry later"
            )
        now = datetime.now(UTC)
        card = in_force(now)
        volume_id = new_resource_id(request)
        if is_retry(request):
            done: VolumeState | None = await read_models.get(ctx.pool, VOLUMES, volume_id)
            if done is not None and done.owner_id == request.user.id:
                return view(done)
        await ensure_affordable(
            ctx.pool,
            request.user.id,
            hourly_cost(volume_usage(available=True, size_gb=data.size), now),
        )
        async with (
            ctx.quotas.held(request.user.id) as usage,
            ctx.storage.held(data.data_center_id) as room,
        ):
            await usage.check_volumes(data.size, new=True)
            # Spread volumes over the data center's hosts with room, stably by id.
            spread = int(volume_id.replace("-", ""), 16)
            host = await room.choose(storage, data.size, data.data_center_id, spread)
            command = CreateVolume(
                actor=request.user.id,
                at=now,
                name=data.name,
                size_gb=data.size,
                datacenter_id=data.data_center_id,
                host_id=host.id,
                price_per_gb_month_micros=card.storage.volume_per_gb_month,
                rate_card_version=card.id,
            )
            return view(await ctx.execute(VOLUMES, volume_id, command, request))

    @get("/{volume_id:str}", summary="Get a network volume")
    async def get_volume(
        self, request: Request[Any, Any, Any], volume_id: FromPath[str]
    ) -> VolumeOut:
        pool = context_of(request).pool
        mine = _mine(await read_models.get(pool, VOLUMES, volume_id), request.user.id)
        costs = await costs_to_date(pool, [mine.id], datetime.now(UTC))
        return view(mine, costs.get(mine.id, 0))

    @patch("/{volume_id:str}", summary="Rename or grow a network volume (volumes only grow)")
    async def update_volume(
        self, request: Request[Any, Any, Any], volume_id: FromPath[str], data: JSONBody[VolumePatch]
    ) -> VolumeOut:
        ctx = context_of(request)
        command = UpdateVolume(
            actor=request.user.id, at=datetime.now(UTC), name=data.name, size_gb=data.size
        )
        volume_id = read_models.checked_id(volume_id, "volume")
        if data.size is None:
            return view(await ctx.execute(VOLUMES, volume_id, command, request))
        async with ctx.quotas.held(request.user.id) as usage:
            current = _mine(await read_models.get(ctx.pool, VOLUMES, volume_id), request.user.id)
            await usage.check_volumes(max(0, data.size - current.size_gb), new=False)
            return view(await ctx.execute(VOLUMES, volume_id, command, request))

    @delete("/{volume_id:str}", status_code=202, summary="Delete a volume: its data is lost")
    async def delete_volume(
        self, request: Request[Any, Any, Any], volume_id: FromPath[str]
    ) -> Response[VolumeDeletedOut]:
        ctx = context_of(request)
        command = DeleteVolume(actor=request.user.id, at=datetime.now(UTC))
        state: VolumeState = await ctx.execute(
            VOLUMES, read_models.checked_id(volume_id, "volume"), command, request
        )
        return Response(
            VolumeDeletedOut(
                id=state.id,
                status=state.status,
                message=f"volume {state.id} is being deleted: its data is permanently lost",
            ),
            status_code=202,
        )
