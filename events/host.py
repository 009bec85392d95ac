"""Facts about GPU hosts: registration, liveness and who holds which GPU."""

from datetime import datetime
from typing import Any

import msgspec

from events.catalog import registrar

register = registrar("host")


class HostGpu(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    gpu_type_id: str
    memory_mb: int


def upcast_host_registered_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 added the host's disk; v1 hosts did not say."""
    return {**payload, "disk_gb": None}


@register(version=2, upcasters={1: upcast_host_registered_v1_v2})
class HostRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """Also re-sent when an agent restarts; the GPUs listed replace the previous inventory."""

    datacenter_id: str
    cloud_type: str
    gpus: list[HostGpu]
    # "nvml" or "declared" (simulated inventory).
    inventory_source: str
    runtime: str
    # GiB of disk that containers and volumes share (None: unknown, nothing is checked).
    disk_gb: int | None


@register()
class HostLost(msgspec.Struct, frozen=True):
    reason: str
    # When its agent was last heard: its instances' GPU time is not billed from then on.
    last_heard_at: datetime | None = None


@register()
class HostRecovered(msgspec.Struct, frozen=True):
    pass


def upcast_gpus_allocated_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 may name a serverless worker's endpoint; every v1 lease was an instance's."""
    return {**payload, "endpoint_id": None}


@register(version=2, upcasters={1: upcast_gpus_allocated_v1_v2})
class GpusAllocated(msgspec.Struct, frozen=True, kw_only=True):
    # Who holds the GPUs: an instance, or a serverless worker (its id) of `endpoint_id`.
    instance_id: str
    # Names this allocation: a late release of an earlier lease never frees a newer one.
    lease_id: str
    gpu_uuids: list[str]
    # Set when the holder is a worker of this endpoint (events/endpoint.py, WorkerPlaced).
    endpoint_id: str | None = None


@register()
class GpusReleased(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    lease_id: str
    gpu_uuids: list[str]
