"""GET /gpu-types and GET /datacenters: prices from the rate card, live availability from hosts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, get

from ledger.money import MICROS_PER_USD
from ledger.rate_card import first_resources, in_force
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import Page
from services.datacenters import DATACENTERS
from services.deciders.host import HostState
from services.deciders.placement import free_by_datacenter

HOSTS = PROJECTIONS["hosts"]


class Availability(msgspec.Struct, rename="camel", kw_only=True):
    data_center_id: str
    cloud_type: str
    available: int
    total: int


class GpuTypeOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    display_name: str
    memory_in_gb: int
    # What each GPU rents with it (the instance's container gets these times gpuCount).
    vcpu_per_gpu: int
    ram_in_gb_per_gpu: int
    # USD per GPU-hour, for people; the *Micros fields are exact integers, for programs.
    secure_price: float
    community_price: float
    secure_price_micros: int
    community_price_micros: int
    serverless_price_per_second_micros: int
    rate_card_version: str
    availability: list[Availability]


class DatacenterOut(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    country: str
    hosts: int
    gpus_available: int
    gpus_total: int


async def _hosts(request: Request[Any, Any, Any]) -> list[HostState]:
    states: list[HostState] = await read_models.list_visible(context_of(request).pool, HOSTS, None)
    return states


@get("/gpu-types", tags=["catalog"], summary="GPU types, prices and availability (paged)")
async def gpu_types(request: Request[Any, Any, Any], page: Page) -> Response[list[GpuTypeOut]]:
    card = in_force(datetime.now(UTC))
    availability = free_by_datacenter(await _hosts(request))
    out = []
    for gpu in card.gpus:
        resources = gpu.resources or first_resources(gpu.id)
        out.append(
            GpuTypeOut(
                id=gpu.id,
                display_name=gpu.display_name,
                memory_in_gb=gpu.memory_gb,
                vcpu_per_gpu=resources.vcpu_per_gpu if resources else 0,
                ram_in_gb_per_gpu=resources.ram_gb_per_gpu if resources else 0,
                secure_price=gpu.secure_per_hour / MICROS_PER_USD,
                community_price=gpu.community_per_hour / MICROS_PER_USD,
                secure_price_micros=gpu.secure_per_hour,
                community_price_micros=gpu.community_per_hour,
                serverless_price_per_second_micros=gpu.serverless_per_second,
                rate_card_version=card.id,
                availability=[
                    Availability(data_center_id=dc, cloud_type=cloud, available=free, total=total)
                    for (dc, gpu_type, cloud), (free, total) in sorted(availability.items())
                    if gpu_type == gpu.id
                ],
            )
        )
    return page.response(request, page.of_list(out, lambda g: g.id))


@get("/datacenters", tags=["catalog"], summary="Data centers and their GPU capacity (paged)")
async def datacenters(request: Request[Any, Any, Any], page: Page) -> Response[list[DatacenterOut]]:
    hosts = await _hosts(request)
    out = []
    for dc in DATACENTERS.values():
        mine = [h for h in hosts if h.datacenter_id == dc.id]
        total = sum(len(h.gpus) for h in mine)
        free = sum(1 for h in mine if h.available for g in h.gpus if g.uuid not in h.allocations)
        out.append(
            DatacenterOut(
                id=dc.id,
                name=dc.name,
                country=dc.country,
                hosts=len(mine),
                gpus_available=free,
                gpus_total=total,
            )
        )
    return page.response(request, page.of_list(out, lambda d: d.id))
