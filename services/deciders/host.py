"""GPU hosts and their GPUs. The host aggregate is the only place a GPU is handed out, so its
optimistic concurrency is what makes double allocation impossible, however many deciders race."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.envelope import Envelope
from events.host import (
    GpusAllocated,
    GpusReleased,
    HostGpu,
    HostLost,
    HostRecovered,
    HostRegistered,
)
from services.deciders.decider import Command, Decider
from services.errors import BadRequest, Conflict, NotFound


class Lease(msgspec.Struct, frozen=True):
    # The instance, or serverless worker, that holds it.
    instance_id: str
    lease_id: str
    # When the allocation happened (None in states folded before this field existed).
    allocated_at: datetime | None = None
    # The endpoint of the worker that holds it (None: an instance holds it).
    endpoint_id: str | None = None


class HostState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    datacenter_id: str
    cloud_type: str
    gpus: tuple[HostGpu, ...]
    inventory_source: str
    runtime: str
    registered_at: datetime
    # GiB of disk for containers and volumes; None: unknown (not checked).
    disk_gb: int | None = None
    available: bool = True
    # While unavailable: when it was last heard (what runs there is not billed from then on).
    lost_since: datetime | None = None
    # gpu uuid -> who holds it. One key per GPU: a GPU cannot be held twice.
    allocations: dict[str, Lease] = {}
    version: int = 0

    def free(self, gpu_type_id: str) -> list[str]:
        return [
            g.uuid
            for g in sorted(self.gpus, key=lambda g: g.index)
            if g.gpu_type_id == gpu_type_id and g.uuid not in self.allocations
        ]

    def leases(self) -> dict[str, Lease]:
        """lease id -> the lease (one entry per lease, whatever its GPU count)."""
        return {lease.lease_id: lease for lease in self.allocations.values()}

    def held_by(self, instance_id: str) -> dict[str, list[str]]:
        """lease id -> GPUs, for the instance's leases on this host."""
        leases: dict[str, list[str]] = {}
        for uuid, lease in self.allocations.items():
            if lease.instance_id == instance_id:
                leases.setdefault(lease.lease_id, []).append(uuid)
        return leases


class RegisterHost(Command, frozen=True, kw_only=True):
    datacenter_id: str
    cloud_type: str
    gpus: list[HostGpu]
    inventory_source: str
    runtime: str
    disk_gb: int | None = None


class MarkHostLost(Command, frozen=True, kw_only=True):
    reason: str
    last_heard_at: datetime | None = None


class MarkHostRecovered(Command, frozen=True, kw_only=True):
    pass


class AllocateGpus(Command, frozen=True, kw_only=True):
    # The instance, or the serverless worker of `endpoint_id`, that will hold the GPUs.
    instance_id: str
    lease_id: str
    gpu_type_id: str
    count: int
    endpoint_id: str | None = None


class ReleaseGpus(Command, frozen=True, kw_only=True):
    instance_id: str
    lease_id: str


HostCommand = RegisterHost | MarkHostLost | MarkHostRecovered | AllocateGpus | ReleaseGpus

CLOUD_TYPES = ("SECURE", "COMMUNITY")


def _registration(command: RegisterHost) -> HostRegistered:
    return HostRegistered(
        datacenter_id=command.datacenter_id,
        cloud_type=command.cloud_type,
        gpus=sorted(command.gpus, key=lambda g: g.index),
        inventory_source=command.inventory_source,
        runtime=command.runtime,
        disk_gb=command.disk_gb,
    )


def decide(state: HostState | None, command: HostCommand) -> list[msgspec.Struct]:
    match command:
        case RegisterHost():
            if command.cloud_type not in CLOUD_TYPES:
                raise BadRequest(f"cloud type must be one of {', '.join(CLOUD_TYPES)}")
            uuids = [g.uuid for g in command.gpus]
            if len(set(uuids)) != len(uuids):
                raise BadRequest("a host cannot list one GPU twice")
            event = _registration(command)
            events: list[msgspec.Struct] = []
            if state is not None:
                lost = [u for u in state.allocations if u not in set(uuids)]
                if lost:
                    raise Conflict(f"re-registration drops GPUs held by instances: {lost}")
                if (
                    state.datacenter_id,
                    state.cloud_type,
                    list(state.gpus),
                    state.inventory_source,
                    state.runtime,
                    state.disk_gb,
                ) != (
                    event.datacenter_id,
                    event.cloud_type,
                    event.gpus,
                    event.inventory_source,
                    event.runtime,
                    event.disk_gb,
                ):
                    events.append(event)
                if not state.available:
                    events.append(HostRecovered())
                return events
            return [event]
        case MarkHostLost():
            if state is None:
                raise NotFound("host not registered")
            silent = HostLost(reason=command.reason, last_heard_at=command.last_heard_at)
            return [silent] if state.available else []
        case MarkHostRecovered():
            if state is None:
                raise NotFound("host not registered")
            return [] if state.available else [HostRecovered()]
        case AllocateGpus():
            if state is None:
                raise NotFound("host not registered")
            held = state.held_by(command.instance_id).get(command.lease_id)
            if held is not None:
                return []  # the same lease asked again: already done
            if command.count < 1:
                raise BadRequest("gpuCount must be at least 1")
            if not state.available:
                raise Conflict(f"host {state.id} is unavailable")
            free = state.free(command.gpu_type_id)
            if len(free) < command.count:
                raise Conflict(
                    f"no capacity: host {state.id} has {len(free)} free {command.gpu_type_id}"
                )
            return [
                GpusAllocated(
                    instance_id=command.instance_id,
                    lease_id=command.lease_id,
                    gpu_uuids=free[: command.count],
                    endpoint_id=command.endpoint_id,
                )
            ]
        case ReleaseGpus():
            if state is None:
                return []
            gpus = state.held_by(command.instance_id).get(command.lease_id)
            if not gpus:
                return []
            return [
                GpusReleased(
                    instance_id=command.instance_id, lease_id=command.lease_id, gpu_uuids=gpus
                )
            ]
    raise BadRequest(f"unknown command {type(command).__name__}")


def evolve(state: HostState | None, event: Envelope) -> HostState:
    data = event.data
    if isinstance(data, HostRegistered):
        if state is None:
            return HostState(
                id=event.aggregate.id,
                datacenter_id=data.datacenter_id,
                cloud_type=data.cloud_type,
                gpus=tuple(data.gpus),
                inventory_source=data.inventory_source,
                runtime=data.runtime,
                registered_at=event.occurred_at,
                disk_gb=data.disk_gb,
                version=1,
            )
        return msgspec.structs.replace(
            state,
            datacenter_id=data.datacenter_id,
            cloud_type=data.cloud_type,
            gpus=tuple(data.gpus),
            inventory_source=data.inventory_source,
            runtime=data.runtime,
            disk_gb=data.disk_gb,
            version=state.version + 1,
        )
    assert state is not None, f"{event.type} before HostRegistered"
    version = state.version + 1
    if isinstance(data, HostLost):
        since = data.last_heard_at or event.occurred_at
        return msgspec.structs.replace(state, available=False, lost_since=since, version=version)
    if isinstance(data, HostRecovered):
        return msgspec.structs.replace(state, available=True, lost_since=None, version=version)
    if isinstance(data, GpusAllocated):
        allocations = dict(state.allocations)
        for uuid in data.gpu_uuids:
            allocations[uuid] = Lease(
                data.instance_id, data.lease_id, event.occurred_at, data.endpoint_id
            )
        return msgspec.structs.replace(state, allocations=allocations, version=version)
    if isinstance(data, GpusReleased):
        allocations = {u: a for u, a in state.allocations.items() if u not in data.gpu_uuids}
        return msgspec.structs.replace(state, allocations=allocations, version=version)
    raise TypeError(f"host cannot apply {event.type}")


HOST = Decider[HostState](
    aggregate_type="host",
    state_type=HostState,
    command_type=HostCommand,
    decide=decide,
    evolve=evolve,
)
