"""What the ledger remembers of each billed resource, and how each event changes what it uses.

One `Tracked` per instance, network volume and serverless worker: the few facts its usage depends
on, and its open sessions. `step` folds one event into it and returns the session actions that
follow (`ledger.usage.reconcile`); `host_changed` does the same for an instance whose host was lost
or came back. Pure: the ledger role loads and stores these, and property tests drive them."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.endpoint import WorkerStarted, WorkerStopped
from events.envelope import Envelope
from events.host import HostLost, HostRecovered
from events.instance import (
    InstanceCreated,
    InstanceExited,
    InstanceFailed,
    InstanceHostLost,
    InstanceReconfigured,
    InstanceRunning,
    InstanceStopped,
    InstanceTerminated,
)
from events.volume import (
    VolumeCreated,
    VolumeDeleted,
    VolumeProvisioned,
    VolumeProvisioningFailed,
    VolumeResized,
)
from ledger.usage import (
    Action,
    PriceOf,
    Session,
    Usage,
    instance_usage,
    reconcile,
    volume_usage,
    worker_usage,
)

ENDS_RUNNING = (InstanceStopped, InstanceExited, InstanceFailed, InstanceTerminated)


class Tracked(msgspec.Struct, kw_only=True):
    resource_type: str  # instance | volume | worker
    resource_id: str
    user_id: str
    host_id: str | None = None
    running: bool = False
    host_lost: bool = False
    ended: bool = False
    gpu_type_id: str = ""
    gpu_count: int = 0
    cloud_type: str = "SECURE"
    container_disk_gb: int = 0
    volume_gb: int = 0
    network_volume: bool = False
    size_gb: int = 0
    active: bool = False
    # A serverless worker's endpoint (the aggregate its events are on): summaries group by it.
    endpoint_id: str | None = None
    open: dict[str, Session] = {}

    def usage(self) -> list[Usage]:
        if self.resource_type == "instance":
            return instance_usage(
                running=self.running,
                host_lost=self.host_lost,
                terminated=self.ended,
                gpu_type_id=self.gpu_type_id,
                gpu_count=self.gpu_count,
                cloud_type=self.cloud_type,
                container_disk_gb=self.container_disk_gb,
                volume_gb=self.volume_gb,
                network_volume=self.network_volume,
            )
        if self.resource_type == "volume":
            return volume_usage(available=self.running and not self.ended, size_gb=self.size_gb)
        return worker_usage(
            running=self.running and not self.ended,
            gpu_type_id=self.gpu_type_id,
            gpu_count=self.gpu_count,
            active=self.active,
        )


def key_of(event: Envelope) -> tuple[str, str] | None:
    """Which tracked resource an event is about, if any."""
    data = event.data
    if event.aggregate.type in ("instance", "volume"):
        return event.aggregate.type, event.aggregate.id
    if isinstance(data, WorkerStarted | WorkerStopped):
        return "worker", data.worker_id
    return None


def _changed(tracked: Tracked | None, event: Envelope) -> Tracked | None:
    """The resource after `event` (None: the event is not about anything billed)."""
    data = event.data
    replace = msgspec.structs.replace
    match data:
        case InstanceCreated():
            return Tracked(
                resource_type="instance",
                resource_id=event.aggregate.id,
                user_id=event.actor,
                host_id=data.host_id,
                gpu_type_id=data.gpu_type_id,
                gpu_count=data.gpu_count,
                cloud_type=data.cloud_type,
                container_disk_gb=data.container.container_disk_in_gb,
                volume_gb=data.container.volume_in_gb,
                network_volume=data.network_volume_id is not None,
            )
        case VolumeCreated():
            return Tracked(
                resource_type="volume",
                resource_id=event.aggregate.id,
                user_id=event.actor,
                host_id=data.host_id,
                size_gb=data.size_gb,
            )
        case WorkerStarted():
            return Tracked(
                resource_type="worker",
                resource_id=data.worker_id,
                user_id=data.owner_id,
                host_id=data.host_id,
                running=True,
                gpu_type_id=data.gpu_type_id,
                gpu_count=data.gpu_count,
                active=data.active,
                endpoint_id=event.aggregate.id,
            )
    if tracked is None:
        return None
    match data:
        case InstanceRunning():
            return replace(tracked, running=True, host_lost=False)
        case InstanceTerminated():
            return replace(tracked, running=False, ended=True)
        case InstanceStopped() | InstanceExited() | InstanceFailed():
            return replace(tracked, running=False)
        case InstanceHostLost():
            return replace(tracked, host_lost=True)
        case InstanceReconfigured():
            grown = data.container
            return replace(
                tracked,
                container_disk_gb=grown.container_disk_in_gb or tracked.container_disk_gb,
                volume_gb=grown.volume_in_gb
                if grown.volume_in_gb is not None
                else tracked.volume_gb,
            )
        case VolumeProvisioned():
            return replace(tracked, running=True)
        case VolumeResized():
            return replace(tracked, size_gb=data.size_gb)
        case VolumeDeleted() | VolumeProvisioningFailed():
            return replace(tracked, running=False, ended=True)
        case WorkerStopped():
            return replace(tracked, running=False, ended=True)
    return tracked


def step(
    tracked: Tracked | None, event: Envelope, price_of: PriceOf
) -> tuple[Tracked | None, list[Action]]:
    changed = _changed(tracked, event)
    if changed is None:
        return None, []
    return _sessions(changed, event.occurred_at, event.id, price_of)


def host_changed(
    tracked: Tracked, lost: bool, at: datetime, cause: str, price_of: PriceOf
) -> tuple[Tracked, list[Action]]:
    """The instance's host stopped heartbeating at `at` (lost) or was heard again."""
    if tracked.resource_type != "instance" or tracked.host_lost == lost:
        return tracked, []
    result, actions = _sessions(
        msgspec.structs.replace(tracked, host_lost=lost), at, cause, price_of
    )
    assert result is not None
    return result, actions


def fold_event(
    tracked: dict[tuple[str, str], Tracked], event: Envelope, price_of: PriceOf
) -> list[Action]:
    """Apply one event to the resources it concerns (in `tracked`, changed in place; for a host
    event, every instance of that host must be in it) and return the session actions."""
    data = event.data
    if isinstance(data, HostLost | HostRecovered):
        lost = isinstance(data, HostLost)
        # GPU time stops when the host was last heard, not when its silence was noticed.
        at = event.occurred_at
        if isinstance(data, HostLost) and data.last_heard_at is not None:
            at = data.last_heard_at
        actions: list[Action] = []
        for key, t in sorted(tracked.items()):
            if t.resource_type == "instance" and t.host_id == event.aggregate.id:
                tracked[key], more = host_changed(t, lost, at, event.id, price_of)
                actions += more
        return actions
    about = key_of(event)
    if about is None:
        return []
    changed, found = step(tracked.get(about), event, price_of)
    if changed is not None:
        tracked[about] = changed
    return found


def _sessions(
    tracked: Tracked, at: datetime, cause: str, price_of: PriceOf
) -> tuple[Tracked, list[Action]]:
    still_open, actions = reconcile(
        tracked.user_id,
        tracked.resource_type,
        tracked.resource_id,
        tracked.open,
        tracked.usage(),
        at,
        cause,
        price_of,
    )
    return msgspec.structs.replace(tracked, open=still_open), actions
