"""Which hosts to try for an instance: a pure ranking over what the deciders know of the fleet.

Correctness does not depend on this view being fresh: the host aggregate refuses an allocation it
cannot honour, and placement moves on to the next candidate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.deciders.host import HostState


def candidates(
    hosts: Iterable[HostState],
    gpu_type_id: str,
    count: int,
    datacenter_id: str | None,
    cloud_type: str,
    claiming: Mapping[str, int] | None = None,
) -> list[HostState]:
    """Hosts that can take `count` GPUs of the type now, best fit first (fewest free GPUs of the
    type, so large hosts stay free for large requests), ties by id for determinism.

    `claiming` is GPUs that placements in flight are about to take per host: counting them keeps
    concurrent placements from all piling onto the same best-fit host and losing races there."""
    claiming = claiming or {}

    def free(h: HostState) -> int:
        return len(h.free(gpu_type_id)) - claiming.get(h.id, 0)

    fitting = [
        h
        for h in hosts
        if h.available
        and h.cloud_type == cloud_type
        and (datacenter_id is None or h.datacenter_id == datacenter_id)
        and free(h) >= count
    ]
    return sorted(fitting, key=lambda h: (free(h), h.id))


def free_by_datacenter(hosts: Iterable[HostState]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(datacenter, gpu type, cloud type) -> (free, total) over available hosts."""
    totals: dict[tuple[str, str, str], tuple[int, int]] = {}
    for host in hosts:
        for gpu in host.gpus:
            key = (host.datacenter_id, gpu.gpu_type_id, host.cloud_type)
            free, total = totals.get(key, (0, 0))
            usable = host.available and gpu.uuid not in host.allocations
            totals[key] = (free + int(usable), total + 1)
    return totals
