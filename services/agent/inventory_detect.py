"""Which GPU inventory an agent uses: NVML when it works, otherwise a declared (simulated) one."""

from __future__ import annotations

import logging

from services.agent.declared_inventory import DeclaredInventory
from services.agent.inventory import GpuInventory, NvmlUnavailable
from services.agent.nvml_inventory import NvmlInventory

log = logging.getLogger(__name__)

DEFAULT_DECLARED = "NVIDIA GeForce RTX 4090:2"


def detect_inventory(declared: str | None, host_id: str) -> GpuInventory:
    """NVML first; without it the declared spec (ValueError if it is malformed), or a small
    default. A simulated inventory is announced with one WARNING line."""
    try:
        return NvmlInventory()
    except NvmlUnavailable as exc:
        reason = str(exc)
    spec = declared if declared else DEFAULT_DECLARED
    inventory = DeclaredInventory.parse(spec, host_id)
    origin = "declared in configuration" if declared else "built-in default"
    log.warning(
        "GPU inventory is SIMULATED (%s; %s: %s): no real GPUs on host %s",
        reason,
        origin,
        spec,
        host_id,
    )
    return inventory
