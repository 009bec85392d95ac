"""What GPUs a host has: from NVML on a real GPU host, or declared in configuration (simulated).

Both implement `GpuInventory` and pass one shared suite (tests/test_inventory_suite.py)."""

from __future__ import annotations

from typing import Protocol

import msgspec


class GpuDevice(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    # The catalogue's GPU type id, e.g. "NVIDIA GeForce RTX 4090".
    name: str
    memory_mb: int


class NvmlUnavailable(Exception):
    """No NVML library or no driver: fall back to a declared inventory."""


class GpuInventory(Protocol):
    # "nvml" or "declared"; shown in logs and in the API so a simulated host is never mistaken.
    source: str

    def devices(self) -> list[GpuDevice]: ...
