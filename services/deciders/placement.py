"""Which hosts to try for an instance: a pure ranking over what the deciders know of the fleet.

Correctness does not depend on this view being fresh: the host aggregate refuses an allocation it
cannot honour, and placement moves on to the next candidate."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

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


def free_counts(host: HostState) -> dict[str, int]:
    """GPU type -> how many of the host's GPUs of that type nobody holds."""
    counts: dict[str, int] = {}
    for gpu in host.gpus:
        if gpu.uuid not in host.allocations:
            counts[gpu.gpu_type_id] = counts.get(gpu.gpu_type_id, 0) + 1
    return counts


def best_fit(
    free: Mapping[str, int],
    hosts: Mapping[str, HostState],
    count: int,
    datacenter_id: str | None,
    cloud_type: str,
    claiming: Mapping[str, int],
    exclude: Container[str] = (),
    only_host: str | None = None,
) -> str | None:
    """The first of `candidates(...)` not excluded, from precomputed free counts of one GPU type
    (host id -> free): one pass, no sorting and no GPU lists, for fleets of thousands of hosts."""
    best: tuple[int, str] | None = None
    for host_id, unclaimed in free.items():
        n = unclaimed - claiming.get(host_id, 0)
        if n < count or host_id in exclude or (only_host is not None and host_id != only_host):
            continue
        host = hosts[host_id]
        if (
            not host.available
            or host.cloud_type != cloud_type
            or (datacenter_id is not None and host.datacenter_id != datacenter_id)
        ):
            continue
        if best is None or (n, host_id) < best:
            best = (n, host_id)
    return best[1] if best else None


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
