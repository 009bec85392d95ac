"""GPU inventory from NVML (`nvidia-ml-py`): what a real GPU host has."""

from __future__ import annotations

import contextlib

import pynvml

from services.agent.inventory import GpuDevice, NvmlUnavailable


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlInventory:
    """Reads every device once, at construction; raises NvmlUnavailable when NVML can't start
    (no library, no driver) or a device can't be read."""

    source = "nvml"

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as exc:
            raise NvmlUnavailable(f"NVML unavailable: {exc}") from exc
        try:
            self._devices = [self._read(index) for index in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not read the GPUs: {exc}") from exc
        finally:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    @staticmethod
    def _read(index: int) -> GpuDevice:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return GpuDevice(
            index=index,
            uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            memory_mb=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
        )

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)
