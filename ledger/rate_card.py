"""The versioned rate card (ledger/rate_card.toml), read once into integer micro-USD, with what a
GPU rents with it (vCPUs and RAM per GPU) from the version that first listed them on."""

from __future__ import annotations

import functools
from datetime import datetime
from importlib import resources

import msgspec

from ledger.money import usd_to_micros


class GpuResources(msgspec.Struct, frozen=True, kw_only=True):
    """What one GPU of a type rents with it: the container's CPU and memory per GPU."""

    vcpu_per_gpu: int
    ram_gb_per_gpu: int


class GpuPrice(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    display_name: str
    # The GPU's own memory (VRAM).
    memory_gb: int
    secure_per_hour: int
    community_per_hour: int
    serverless_per_second: int
    # A lower rate for always-on (active) serverless workers; flex when the card has none.
    serverless_active_per_second: int | None = None
    # None only in versions from before the card listed them.
    resources: GpuResources | None = None

    def per_hour(self, cloud_type: str) -> int:
        return self.secure_per_hour if cloud_type == "SECURE" else self.community_per_hour


class StoragePrice(msgspec.Struct, frozen=True, kw_only=True):
    """Per GB per storage month (30 days, written on the card)."""

    # A network volume's first TB, and every GB above it.
    volume_per_gb_month: int
    volume_above_1tb_per_gb_month: int
    # An instance's container disk while it runs.
    container_disk_per_gb_month: int
    # An instance's own volume disk while it runs, and while it is stopped.
    running_disk_per_gb_month: int
    stopped_disk_per_gb_month: int


class RateCardVersion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    effective_from: datetime
    storage: StoragePrice
    gpus: tuple[GpuPrice, ...]

    def gpu(self, gpu_type_id: str) -> GpuPrice | None:
        return next((g for g in self.gpus if g.id == gpu_type_id), None)


class _RawGpu(msgspec.Struct, kw_only=True):
    id: str
    display_name: str
    memory_gb: int
    secure_per_hour: str
    community_per_hour: str
    serverless_per_second: str
    serverless_active_per_second: str | None = None
    vcpu_per_gpu: int | None = None
    ram_gb_per_gpu: int | None = None

    def resources(self, version: str) -> GpuResources | None:
        vcpu, ram = self.vcpu_per_gpu, self.ram_gb_per_gpu
        if vcpu is None and ram is None:
            return None
        if vcpu is None or ram is None or min(vcpu, ram) < 1:
            raise ValueError(
                f"rate card {version}, {self.id}: vcpu_per_gpu and ram_gb_per_gpu go together,"
                " each at least 1"
            )
        return GpuResources(vcpu_per_gpu=vcpu, ram_gb_per_gpu=ram)


class _RawStorage(msgspec.Struct, kw_only=True):
    volume_per_gb_month: str
    volume_above_1tb_per_gb_month: str
    container_disk_per_gb_month: str
    running_disk_per_gb_month: str
    stopped_disk_per_gb_month: str


class _RawVersion(msgspec.Struct, kw_only=True):
    id: str
    effective_from: datetime
    storage: _RawStorage
    gpus: list[_RawGpu]


class _RawCard(msgspec.Struct, kw_only=True):
    versions: list[_RawVersion]


def parse(text: str) -> tuple[RateCardVersion, ...]:
    raw = msgspec.toml.decode(text, type=_RawCard)
    versions = tuple(
        RateCardVersion(
            id=v.id,
            effective_from=v.effective_from,
            storage=StoragePrice(
                volume_per_gb_month=usd_to_micros(v.storage.volume_per_gb_month),
                volume_above_1tb_per_gb_month=usd_to_micros(
                    v.storage.volume_above_1tb_per_gb_month
                ),
                container_disk_per_gb_month=usd_to_micros(v.storage.container_disk_per_gb_month),
                running_disk_per_gb_month=usd_to_micros(v.storage.running_disk_per_gb_month),
                stopped_disk_per_gb_month=usd_to_micros(v.storage.stopped_disk_per_gb_month),
            ),
            gpus=tuple(
                GpuPrice(
                    id=g.id,
                    display_name=g.display_name,
                    memory_gb=g.memory_gb,
                    secure_per_hour=usd_to_micros(g.secure_per_hour),
                    community_per_hour=usd_to_micros(g.community_per_hour),
                    serverless_per_second=usd_to_micros(g.serverless_per_second),
                    serverless_active_per_second=usd_to_micros(g.serverless_active_per_second)
                    if g.serverless_active_per_second is not None
                    else None,
                    resources=g.resources(v.id),
                )
                for g in v.gpus
            ),
        )
        for v in raw.versions
    )
    if not versions:
        raise ValueError("the rate card has no versions")
    starts = [v.effective_from for v in versions]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise ValueError("rate card versions must be in strictly increasing effective_from order")
    # Once a version lists what GPUs rent with them, every later one does, for every GPU type:
    # an instance is never created without its vCPU and RAM.
    listed = False
    for version in versions:
        with_resources = [g.resources is not None for g in version.gpus]
        if listed or any(with_resources):
            listed = True
            if not all(with_resources):
                raise ValueError(f"rate card {version.id}: every GPU needs vcpu/ram per GPU")
    return versions


@functools.cache
def rate_card() -> tuple[RateCardVersion, ...]:
    return parse(resources.files("ledger").joinpath("rate_card.toml").read_text())


def in_force(at: datetime) -> RateCardVersion:
    """The version in force at `at` (the earliest one for times before it)."""
    versions = rate_card()
    current = versions[0]
    for version in versions:
        if version.effective_from <= at:
            current = version
    return current


def first_resources(gpu_type_id: str) -> GpuResources | None:
    """The vCPU and RAM per GPU of the first version that listed them for the type: what an
    instance created before the card had them is given (versions are never edited, so this
    never changes once it exists)."""
    for version in rate_card():
        gpu = version.gpu(gpu_type_id)
        if gpu is not None and gpu.resources is not None:
            return gpu.resources
    return None


def gpu_type_ids() -> list[str]:
    return [g.id for g in rate_card()[-1].gpus]
