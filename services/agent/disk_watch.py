"""Disk sizes are enforced by watching: Docker can cap a container's writable layer only on
overlay2 over xfs with project quotas, and a named volume not at all, so a customer could fill the
host's disk through a 1 GB `volumeInGb`. The agent measures what each running instance holds, every
GPUWORKER_DISK_CHECK_INTERVAL seconds, and stops an instance over one of its disks with a reason
that names the disk, what it holds and its limit (the instance ends FAILED, its GPUs freed).

Between two checks an instance can write past its limit by what it writes in that time."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from services.agent.runtime import GIB, DiskUsage
from services.deciders.instance import InstanceState
from services.deciders.volume import VolumeState

DISK_CHECK_S = 60.0


def allocated_bytes(path: str) -> int | None:
    """What a directory tree holds on disk, as `du` counts it (allocated blocks, hard links
    once, symbolic links not followed); None if it cannot be read from here."""
    if not os.path.isdir(path):
        return None
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # gone meanwhile, or unreadable: it holds nothing we can count
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += info.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


def _gb(size: int) -> str:
    return f"{size / GIB:.1f}"


def _over(what: str, used: int, limit_gb: int, fix: str) -> str:
    return (
        f"stopped for using too much disk: {what} holds {_gb(used)} GB, over its limit of"
        f" {limit_gb} GB; {fix}, then start it again"
    )


def over_disk(
    running: Iterable[InstanceState],
    volumes: Mapping[str, VolumeState],
    usage: DiskUsage,
    volume_name_of: Callable[[InstanceState], str | None],
) -> dict[str, str]:
    """Instance id -> why it must stop, for each instance over one of its disks."""
    reasons: dict[str, str] = {}
    for state in running:
        used = usage.containers.get(state.id, 0)
        if used > state.container.container_disk_in_gb * GIB:
            reasons[state.id] = _over(
                "its container disk (containerDiskInGb)",
                used,
                state.container.container_disk_in_gb,
                "free space outside the volume or grow containerDiskInGb",
            )
            continue
        name = volume_name_of(state)
        if name is None or name not in usage.volumes:
            continue
        used = usage.volumes[name]
        if state.network_volume_id is not None:
            volume = volumes.get(state.network_volume_id)
            if volume is not None and used > volume.size_gb * GIB:
                reasons[state.id] = _over(
                    f"network volume {volume.id} at {state.container.volume_mount_path}",
                    used,
                    volume.size_gb,
                    "free space on it or grow the volume",
                )
        elif used > state.container.volume_in_gb * GIB:
            reasons[state.id] = _over(
                f"its volume at {state.container.volume_mount_path} (volumeInGb)",
                used,
                state.container.volume_in_gb,
                "free space on it or grow volumeInGb",
            )
    return reasons
