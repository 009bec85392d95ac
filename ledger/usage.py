"""What a resource uses right now, meter by meter, and the usage sessions that follow from it.

Level-triggered and pure: after each event the ledger asks what the resource uses *now*
(`instance_usage`, `volume_usage`, `worker_usage`) and `reconcile` closes the sessions that no
longer match and opens the ones that are new, at the event's own time (`occurred_at`: for what a
host saw, the host's clock). A session never changes: a new quantity or price tier (a disk grown, an
instance stopped) closes one session and opens the next, so sessions of one slot never overlap.

A session's price is the rate card's in force when it opened (`ledger.pricing`), written on the
session: a later rate card never reprices it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

import msgspec

from events.ids import derived_id

Meter = Literal[
    "instance.gpu",
    "instance.container_disk",
    "instance.volume_disk",
    "volume.storage",
    "serverless.worker",
]
PRODUCT_OF: dict[str, str] = {
    "instance.gpu": "instances.gpu",
    "instance.container_disk": "instances.storage",
    "instance.volume_disk": "instances.storage",
    "volume.storage": "volumes",
    "serverless.worker": "serverless",
}
ONE_TB_GB = 1000


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a resource uses now: `quantity` units (GPUs or GB) at a price `tier`."""

    meter: str
    # The price that applies: secure|community (GPUs), running|stopped (disks), first_tb|above_tb
    # (network volumes), flex|active (serverless workers).
    tier: str
    quantity: int
    gpu_type_id: str | None = None

    @property
    def slot(self) -> str:
        """Sessions of one slot follow each other; a volume's two price tiers run side by side."""
        return f"{self.meter}:{self.tier}" if self.meter == "volume.storage" else self.meter


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """Micro-USD per unit per `per_seconds` (3600: an hour; 2,592,000: a 30-day month)."""

    unit_price_micros: int
    per_seconds: int
    rate_card_version: str


class Session(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    resource_type: str
    resource_id: str
    product: str
    meter: str
    slot: str
    tier: str
    gpu_type_id: str | None
    quantity: int
    unit_price_micros: int
    per_seconds: int
    rate_card_version: str
    started_at: datetime


class Opened(msgspec.Struct, frozen=True, tag=True):
    session: Session


class Closed(msgspec.Struct, frozen=True, tag=True):
    session: Session
    ended_at: datetime


Action = Opened | Closed
PriceOf = Callable[[Usage, datetime], Price]


def reconcile(
    owner: str,
    resource_type: str,
    resource_id: str,
    open_sessions: dict[str, Session],
    wanted: list[Usage],
    at: datetime,
    cause: str,
    price_of: PriceOf,
) -> tuple[dict[str, Session], list[Action]]:
    """Sessions after the resource came to use `wanted` at `at` (because of event `cause`)."""
    by_slot = {u.slot: u for u in wanted if u.quantity > 0}
    still_open: dict[str, Session] = {}
    actions: list[Action] = []
    for slot, session in open_sessions.items():
        usage = by_slot.get(slot)
        if usage is not None and (usage.quantity, usage.tier) == (session.quantity, session.tier):
            still_open[slot] = session
            continue
        # Never before its start: clocks of different machines may disagree by a little.
        actions.append(Closed(session, max(at, session.started_at)))
    for slot, usage in by_slot.items():
        if slot in still_open:
            continue
        price = price_of(usage, at)
        session = Session(
            id=derived_id("session", resource_type, resource_id, slot, cause),
            user_id=owner,
            resource_type=resource_type,
            resource_id=resource_id,
            product=PRODUCT_OF[usage.meter],
            meter=usage.meter,
            slot=slot,
            tier=usage.tier,
            gpu_type_id=usage.gpu_type_id,
            quantity=usage.quantity,
            unit_price_micros=price.unit_price_micros,
            per_seconds=price.per_seconds,
            rate_card_version=price.rate_card_version,
            started_at=at,
        )
        still_open[slot] = session
        actions.append(Opened(session))
    return still_open, actions


def instance_usage(
    *,
    running: bool,
    host_lost: bool,
    terminated: bool,
    gpu_type_id: str,
    gpu_count: int,
    cloud_type: str,
    container_disk_gb: int,
    volume_gb: int,
    network_volume: bool,
) -> list[Usage]:
    """GPUs and the container disk while the container runs (GPUs not while its host is lost:
    nobody can tell whether it runs); the instance's own volume disk from creation to termination,
    at the running or the stopped rate. A network volume replaces the instance's own volume and
    is billed as a volume."""
    if terminated:
        return []
    usage: list[Usage] = []
    if running:
        if not host_lost:
            tier = "secure" if cloud_type == "SECURE" else "community"
            usage.append(
                Usage(meter="instance.gpu", tier=tier, quantity=gpu_count, gpu_type_id=gpu_type_id)
            )
        usage.append(
            Usage(meter="instance.container_disk", tier="running", quantity=container_disk_gb)
        )
    if volume_gb > 0 and not network_volume:
        usage.append(
            Usage(
                meter="instance.volume_disk",
                tier="running" if running else "stopped",
                quantity=volume_gb,
            )
        )
    return usage


def volume_usage(*, available: bool, size_gb: int) -> list[Usage]:
    """A network volume's GB from AVAILABLE to deleted; the first TB of a volume at one price and
    the rest at a lower one, as two sessions side by side."""
    if not available:
        return []
    return [
        Usage(meter="volume.storage", tier="first_tb", quantity=min(size_gb, ONE_TB_GB)),
        Usage(meter="volume.storage", tier="above_tb", quantity=max(size_gb - ONE_TB_GB, 0)),
    ]


def worker_usage(*, running: bool, gpu_type_id: str, gpu_count: int, active: bool) -> list[Usage]:
    """A serverless worker's GPUs from its start to its stop."""
    if not running:
        return []
    return [
        Usage(
            meter="serverless.worker",
            tier="active" if active else "flex",
            quantity=gpu_count,
            gpu_type_id=gpu_type_id,
        )
    ]
