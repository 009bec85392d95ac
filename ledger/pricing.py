"""The price of a usage, from the rate card version in force when its session opens."""

from __future__ import annotations

from datetime import datetime

from ledger.money import SECONDS_PER_HOUR
from ledger.rate_card import GpuPrice, in_force, rate_card
from ledger.usage import Price, Usage

# A storage month is 30 days, as the rate card says.
SECONDS_PER_STORAGE_MONTH = 30 * 24 * 3600


class UnknownGpuType(Exception):
    """No rate card version prices this GPU type."""


def _gpu(gpu_type_id: str | None, at: datetime) -> tuple[GpuPrice, str]:
    card = in_force(at)
    gpu = card.gpu(gpu_type_id or "")
    if gpu is not None:
        return gpu, card.id
    # A type the card in force no longer lists keeps the last price it had.
    for version in reversed(rate_card()):
        listed = version.gpu(gpu_type_id or "")
        if listed is not None:
            return listed, version.id
    raise UnknownGpuType(f"no rate card version prices GPU type {gpu_type_id!r}")


def price_of(usage: Usage, at: datetime) -> Price:
    card = in_force(at)
    storage = card.storage
    match usage.meter:
        case "instance.gpu":
            gpu, version = _gpu(usage.gpu_type_id, at)
            per_hour = gpu.secure_per_hour if usage.tier == "secure" else gpu.community_per_hour
            return Price(
                unit_price_micros=per_hour, per_seconds=SECONDS_PER_HOUR, rate_card_version=version
            )
        case "serverless.worker":
            gpu, version = _gpu(usage.gpu_type_id, at)
            active = gpu.serverless_active_per_second
            per_second = (
                active
                if usage.tier == "active" and active is not None
                else (gpu.serverless_per_second)
            )
            return Price(unit_price_micros=per_second, per_seconds=1, rate_card_version=version)
        case "instance.container_disk":
            monthly = storage.container_disk_per_gb_month
        case "instance.volume_disk":
            monthly = (
                storage.running_disk_per_gb_month
                if usage.tier == "running"
                else storage.stopped_disk_per_gb_month
            )
        case "volume.storage":
            monthly = (
                storage.volume_per_gb_month
                if usage.tier == "first_tb"
                else storage.volume_above_1tb_per_gb_month
            )
        case _:
            raise ValueError(f"no price for meter {usage.meter!r}")
    return Price(
        unit_price_micros=monthly, per_seconds=SECONDS_PER_STORAGE_MONTH, rate_card_version=card.id
    )
