"""One suite, every GPU inventory: NVML (real GPUs) and declared (configuration).

No machine here has a GPU, so the NVML case asserts that NvmlInventory says so (NvmlUnavailable)
instead of listing devices; on a GPU host the same case checks the real devices."""

from __future__ import annotations

import ctypes.util
import logging
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from services.agent.declared_inventory import KNOWN_GPU_TYPES, DeclaredInventory
from services.agent.inventory import GpuDevice, GpuInventory, NvmlUnavailable
from services.agent.inventory_detect import DEFAULT_DECLARED, detect_inventory
from services.agent.nvml_inventory import NvmlInventory


def gpu_host() -> bool:
    """Whether this machine has an NVIDIA driver (then NVML must work)."""
    return os.path.exists("/dev/nvidiactl") or ctypes.util.find_library("nvidia-ml") is not None


class NoNvml:
    """The NVML case on a machine without a GPU: NvmlInventory() raised NvmlUnavailable."""

    source = "nvml"


InventoryCase = GpuInventory | NoNvml


@pytest.fixture(
    params=[
        "nvml",
        "declared:NVIDIA GeForce RTX 4090:4,NVIDIA A100 80GB PCIe:2",
        "declared:NVIDIA H100 80GB HBM3:8",
        "declared:NVIDIA L40S:1, NVIDIA RTX A6000:3",
        f"declared:{DEFAULT_DECLARED}",
    ]
)
def inventory(request: pytest.FixtureRequest) -> InventoryCase:
    kind, _, spec = str(request.param).partition(":")
    if kind == "declared":
        return DeclaredInventory.parse(spec, "host-a")
    try:
        return NvmlInventory()
    except NvmlUnavailable as exc:
        assert not gpu_host(), f"this machine has an NVIDIA driver but NVML failed: {exc}"
        assert "NVML" in str(exc)
        return NoNvml()


def devices_of(inventory: InventoryCase) -> list[GpuDevice] | None:
    """The devices; None for NVML without a GPU, after asserting that it says so again."""
    if isinstance(inventory, NoNvml):
        with pytest.raises(NvmlUnavailable):
            NvmlInventory()
        return None
    return inventory.devices()


def test_source_names_the_backend(inventory: InventoryCase) -> None:
    assert inventory.source in ("nvml", "declared")
    if isinstance(inventory, DeclaredInventory):
        assert inventory.source == "declared"
    if isinstance(inventory, NvmlInventory | NoNvml):
        assert inventory.source == "nvml"


def test_devices_are_indexed_from_zero_with_unique_uuids(inventory: InventoryCase) -> None:
    devices = devices_of(inventory)
    if devices is None:
        return
    assert devices, "an inventory lists at least one GPU"
    assert [d.index for d in devices] == list(range(len(devices)))
    assert len({d.uuid for d in devices}) == len(devices)
    assert all(d.uuid.startswith("GPU-") for d in devices)


def test_devices_have_memory_and_a_catalogue_name(inventory: InventoryCase) -> None:
    devices = devices_of(inventory)
    if devices is None:
        return
    for device in devices:
        assert device.memory_mb > 0
        assert device.name.strip() == device.name and device.name
        if isinstance(inventory, DeclaredInventory):
            assert device.name in KNOWN_GPU_TYPES
            assert device.memory_mb == KNOWN_GPU_TYPES[device.name]


def test_devices_are_the_same_on_every_read(inventory: InventoryCase) -> None:
    devices = devices_of(inventory)
    if devices is None:
        return
    assert isinstance(inventory, DeclaredInventory | NvmlInventory)
    assert inventory.devices() == devices
    inventory.devices().clear()  # a caller can't change the inventory through the list
    assert inventory.devices() == devices


# -- NVML --------------------------------------------------------------------------------------


def test_nvml_is_unavailable_without_a_gpu() -> None:
    assert not gpu_host(), "this test documents the GPU-less machines the suite runs on"
    with pytest.raises(NvmlUnavailable, match="NVML"):
        NvmlInventory()


def test_nvml_devices_are_read_and_nvml_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reading path, against a stand-in for the driver (the one part this machine lacks)."""
    calls: list[str] = []
    gpus: list[tuple[str | bytes, str | bytes, int]] = [
        (b"GPU-11111111-2222-3333-4444-555555555555", b"NVIDIA A100 80GB PCIe", 85899345920),
        ("GPU-66666666-7777-8888-9999-000000000000", "NVIDIA A100 80GB PCIe", 85899345920),
    ]
    fake: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: calls.append("init"),
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetUUID": lambda h: gpus[h][0],
        "nvmlDeviceGetName": lambda h: gpus[h][1],
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=gpus[h][2]),
    }
    for name, function in fake.items():
        monkeypatch.setattr(pynvml, name, function)

    devices = NvmlInventory().devices()

    assert calls == ["init", "shutdown"]
    assert devices == [
        GpuDevice(
            index=0,
            uuid="GPU-11111111-2222-3333-4444-555555555555",
            name="NVIDIA A100 80GB PCIe",
            memory_mb=81920,
        ),
        GpuDevice(
            index=1,
            uuid="GPU-66666666-7777-8888-9999-000000000000",
            name="NVIDIA A100 80GB PCIe",
            memory_mb=81920,
        ),
    ]


def test_nvml_read_errors_are_unavailable_and_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken_count() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: calls.append("init"))
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", broken_count)

    with pytest.raises(NvmlUnavailable, match="could not read"):
        NvmlInventory()
    assert calls == ["init", "shutdown"]


# -- declared ----------------------------------------------------------------------------------


def test_declared_uuids_are_stable_and_per_host() -> None:
    spec = "NVIDIA GeForce RTX 4090:2,NVIDIA L40S:1"
    first = DeclaredInventory.parse(spec, "host-a").devices()

    assert [d.uuid for d in first] == ["GPU-sim-host-a-0", "GPU-sim-host-a-1", "GPU-sim-host-a-2"]
    assert DeclaredInventory.parse(spec, "host-a").devices() == first  # after a restart
    other = {d.uuid for d in DeclaredInventory.parse(spec, "host-b").devices()}
    assert other.isdisjoint(d.uuid for d in first)
    assert [d.name for d in first] == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 4090",
        "NVIDIA L40S",
    ]
    assert [d.memory_mb for d in first] == [24564, 24564, 46068]


def test_declared_accepts_spaces_around_items() -> None:
    devices = DeclaredInventory.parse(" NVIDIA A100 80GB PCIe : 2 , NVIDIA L40S:1 ", "h").devices()
    assert [d.name for d in devices] == ["NVIDIA A100 80GB PCIe"] * 2 + ["NVIDIA L40S"]


def test_declared_catalogue_memory() -> None:
    assert KNOWN_GPU_TYPES == {
        "NVIDIA GeForce RTX 4090": 24564,
        "NVIDIA A100 80GB PCIe": 81920,
        "NVIDIA H100 80GB HBM3": 81559,
        "NVIDIA L40S": 46068,
        "NVIDIA RTX A6000": 49140,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty GPU inventory"),
        ("   ", "empty GPU inventory"),
        ("NVIDIA GeForce RTX 4090", "is not '<GPU type>:<count>'"),
        (":4", "is not '<GPU type>:<count>'"),
        ("NVIDIA GeForce RTX 4090:", "count must be a whole number from 1 to 64"),
        ("NVIDIA GeForce RTX 4090:0", "count must be a whole number from 1 to 64"),
        ("NVIDIA GeForce RTX 4090:65", "count must be a whole number from 1 to 64"),
        ("NVIDIA GeForce RTX 4090:-1", "count must be a whole number from 1 to 64"),
        ("NVIDIA GeForce RTX 4090:two", "count must be a whole number from 1 to 64"),
        ("NVIDIA GeForce RTX 4090:2,", "is not '<GPU type>:<count>'"),
        ("NVIDIA GeForce RTX 4090:1,NVIDIA GeForce RTX 4090:1", "declared twice"),
        ("Tesla T4:1", "unknown GPU type 'Tesla T4'; known types: NVIDIA A100 80GB PCIe, "),
        ("RTX 4090:1", "NVIDIA GeForce RTX 4090"),  # the message lists the exact names
    ],
)
def test_declared_parse_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as failure:
        DeclaredInventory.parse(spec, "h")
    assert message in str(failure.value)


def test_declared_counts_up_to_64() -> None:
    assert len(DeclaredInventory.parse("NVIDIA L40S:64", "h").devices()) == 64


# -- detection ---------------------------------------------------------------------------------


def test_detect_falls_back_to_the_declared_inventory(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.agent.inventory_detect"):
        inventory = detect_inventory("NVIDIA H100 80GB HBM3:2", "host-x")

    assert inventory.source == "declared"
    assert [d.uuid for d in inventory.devices()] == ["GPU-sim-host-x-0", "GPU-sim-host-x-1"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "SIMULATED" in warnings[0].getMessage()
    assert "NVIDIA H100 80GB HBM3:2" in warnings[0].getMessage()


def test_detect_without_a_declaration_uses_a_small_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="services.agent.inventory_detect"):
        inventory = detect_inventory(None, "host-y")

    assert inventory.source == "declared"
    assert [d.name for d in inventory.devices()] == ["NVIDIA GeForce RTX 4090"] * 2
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "SIMULATED" in warning.getMessage() and "default" in warning.getMessage()


def test_detect_rejects_a_malformed_declaration() -> None:
    with pytest.raises(ValueError, match="unknown GPU type"):
        detect_inventory("NVIDIA GeForce GTX 480:1", "host-z")
