"""A GPU inventory declared in configuration, for hosts without NVML (development, scale tests).

`DeclaredInventory.parse("NVIDIA GeForce RTX 4090:4,NVIDIA A100 80GB PCIe:2", host_id)` gives six
devices with fake but stable UUIDs (`GPU-sim-<host>-<index>`), so a restarted agent reports the
same GPUs and placements made before the restart stay valid."""

from __future__ import annotations

from services.agent.inventory import GpuDevice

# The GPU types a host may declare, with the memory NVML reports for each (MiB).
KNOWN_GPU_TYPES: dict[str, int] = {
    "NVIDIA GeForce RTX 4090": 24564,
    "NVIDIA A100 80GB PCIe": 81920,
    "NVIDIA H100 80GB HBM3": 81559,
    "NVIDIA L40S": 46068,
    "NVIDIA RTX A6000": 49140,
}
MAX_GPUS_PER_TYPE = 64


class DeclaredInventory:
    source = "declared"

    def __init__(self, devices: list[GpuDevice]) -> None:
        self._devices = list(devices)

    @classmethod
    def parse(cls, spec: str, host_id: str) -> DeclaredInventory:
        """'<GPU type>:<count>[,<GPU type>:<count>…]'; the type may contain spaces and colons
        (the count follows the last ':'). Raises ValueError saying what is wrong."""
        example = '"NVIDIA GeForce RTX 4090:4,NVIDIA A100 80GB PCIe:2"'
        if not spec.strip():
            raise ValueError(f"empty GPU inventory declaration; expected e.g. {example}")
        devices: list[GpuDevice] = []
        seen: set[str] = set()
        for raw in spec.split(","):
            item = raw.strip()
            name, colon, count_text = item.rpartition(":")
            name, count_text = name.strip(), count_text.strip()
            if not colon or not name:
                raise ValueError(
                    f"GPU inventory item {item!r} is not '<GPU type>:<count>'; e.g. {example}"
                )
            if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_GPUS_PER_TYPE:
                raise ValueError(
                    f"GPU inventory item {item!r}: count must be a whole number from 1 to "
                    f"{MAX_GPUS_PER_TYPE}, got {count_text!r}"
                )
            if name not in KNOWN_GPU_TYPES:
                known = ", ".join(sorted(KNOWN_GPU_TYPES))
                raise ValueError(f"unknown GPU type {name!r}; known types: {known}")
            if name in seen:
                raise ValueError(f"GPU type {name!r} is declared twice; give one total count")
            seen.add(name)
            for _ in range(int(count_text)):
                index = len(devices)
                devices.append(
                    GpuDevice(
                        index=index,
                        uuid=f"GPU-sim-{host_id}-{index}",
                        name=name,
                        memory_mb=KNOWN_GPU_TYPES[name],
                    )
                )
        return cls(devices)

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)
