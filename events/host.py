"""Facts about GPU hosts: registration, liveness and who holds which GPU."""

from datetime import datetime

import msgspec

from events.catalog import register


class HostGpu(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    gpu_type_id: str
    memory_mb: int


@register()
class HostRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """Also re-sent when an agent restarts; the GPUs listed replace the previous inventory."""

    datacenter_id: str
    cloud_type: str
    gpus: list[HostGpu]
    # "nvml" or "declared" (simulated inventory).
    inventory_source: str
    runtime: str


@register()
class HostLost(msgspec.Struct, frozen=True):
    reason: str
    # When its agent was last heard: its instances' GPU time is not billed from then on.
    last_heard_at: datetime | None = None


@register()
class HostRecovered(msgspec.Struct, frozen=True):
    pass


@register()
class GpusAllocated(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    # Names this allocation: a late release of an earlier lease never frees a newer one.
    lease_id: str
    gpu_uuids: list[str]


@register()
class GpusReleased(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    lease_id: str
    gpu_uuids: list[str]
