"""Placement: allocate GPUs on a host, then create (or start) the instance that holds them.

Two aggregates, in this order. If the instance step is refused, the allocation is released at
once; if this process dies in between, the lease is orphaned and the GPU sweeper (which compares
host leases with instance leases) frees it."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.ids import new_id
from services.command_wire import CommandEnvelope, Reply
from services.deciders.decider import Command, is_system
from services.deciders.fleet_view import FleetView
from services.deciders.host import AllocateGpus, HostState, ReleaseGpus
from services.deciders.instance import (
    STARTABLE,
    CreateInstance,
    InstanceState,
    StartInstance,
)
from services.deciders.placement import best_fit
from services.deciders.runner import DeciderRunner
from services.deciders.volume import AttachVolume, DetachVolume, VolumeState
from services.errors import BadRequest, Conflict, GpuWorkerError, NotFound, from_body

log = logging.getLogger("gpuworker.placement")

MAX_HOSTS_TRIED = 8
CLAIM_WAIT_S = 2.0
PLACEMENT_ACTOR = "system:placement"


class PlaceInstance(Command, frozen=True, kw_only=True):
    """CreateInstance without the host, GPUs and lease: placement chooses those."""

    name: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    datacenter_id: str | None
    template_id: str
    image_name: str
    docker_start_cmd: str | None
    env: dict[str, str]
    ports: list[str]
    container_disk_in_gb: int
    volume_in_gb: int
    volume_mount_path: str
    network_volume_id: str | None
    price_per_hour_micros: int
    rate_card_version: str
    registry_auth_id: str | None = None
    vcpu_count: int
    memory_in_gb: int
    # Hosts the api found without free disk for the instance's own disks: not tried.
    hosts_without_disk: list[str] = []


class StartPlacedInstance(Command, frozen=True, kw_only=True):
    pass


PlacementCommand = PlaceInstance | StartPlacedInstance


def no_capacity(
    count: int,
    gpu_type_id: str,
    datacenter_id: str | None,
    cloud_type: str,
    without_disk: int = 0,
) -> str:
    where = f"in {datacenter_id}" if datacenter_id else "in any data center"
    skipped = (
        f" ({without_disk} host{'s' if without_disk > 1 else ''} without enough free disk for"
        " this instance's containerDiskInGb and volumeInGb left out)"
        if without_disk
        else ""
    )
    return (
        f"no capacity: no {cloud_type} host {where} has {count} free {gpu_type_id}"
        f" GPU{'s' if count > 1 else ''} right now{skipped}; try fewer GPUs, smaller disks,"
        " another GPU type or data center, or retry later"
    )


class PlacementService:
    def __init__(self, runner: DeciderRunner, fleet: FleetView) -> None:
        self._runner = runner
        self._fleet = fleet
        self._decode = msgspec.json.Decoder(PlacementCommand).decode
        self._claiming: defaultdict[str, int] = defaultdict(int)
        self._host_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def handle(self, envelope: CommandEnvelope) -> Reply:
        try:
            command = self._decode(envelope.command)
            if isinstance(command, PlaceInstance):
                return await self._place(envelope, command)
            return await self._start(envelope, command)
        except GpuWorkerError as err:
            return Reply(error=err.body())

    async def _allocate(
        self, host_id: str, instance_id: str, gpu_type_id: str, count: int, correlation_id: str
    ) -> tuple[str, list[str]] | None:
        lease_id = new_id()
        reply = await self._runner.run(
            "host",
            host_id,
            AllocateGpus(
                actor=PLACEMENT_ACTOR,
                at=datetime.now(UTC),
                instance_id=instance_id,
                lease_id=lease_id,
                gpu_type_id=gpu_type_id,
                count=count,
            ),
            correlation_id,
        )
        if reply.error is not None:
            if reply.error.code == 409:
                return None
            raise GpuWorkerError(reply.error.message)
        state = msgspec.json.decode(reply.state, type=HostState)
        self._fleet.offer(state, reply.sequence)
        return lease_id, state.held_by(instance_id)[lease_id]

    async def release(self, host_id: str, instance_id: str, lease_id: str, cid: str) -> None:
        reply = await self._runner.run(
            "host",
            host_id,
            ReleaseGpus(
                actor=PLACEMENT_ACTOR,
                at=datetime.now(UTC),
                instance_id=instance_id,
                lease_id=lease_id,
            ),
            cid,
        )
        if reply.error is not None:
            log.warning("could not release lease %s on %s: %s", lease_id, host_id, reply.error)
        else:
            self._fleet.offer(msgspec.json.decode(reply.state, type=HostState), reply.sequence)

    async def _volume(self, command: PlaceInstance, instance_id: str, cid: str) -> VolumeState:
        """Attach the network volume first: it pins the instance to the volume's host, and a
        delete of the volume racing with this create is refused by the volume aggregate."""
        assert command.network_volume_id is not None
        volume, _seq = await self._runner.current("volume", command.network_volume_id)
        if not isinstance(volume, VolumeState) or volume.owner_id != command.actor:
            raise BadRequest(f"field `networkVolumeId`: no volume {command.network_volume_id!r}")
        if command.datacenter_id is not None and command.datacenter_id != volume.datacenter_id:
            raise BadRequest(
                f"field `networkVolumeId`: volume {volume.id} is in {volume.datacenter_id},"
                f" not in the requested data center {command.datacenter_id}"
            )
        reply = await self._runner.run(
            "volume",
            volume.id,
            AttachVolume(actor=command.actor, at=command.at, instance_id=instance_id),
            cid,
        )
        if reply.error is not None:
            if reply.error.code == 404:  # deleted since it was read: the field is what's wrong
                raise BadRequest(
                    f"field `networkVolumeId`: no volume {command.network_volume_id!r}"
                )
            raise from_body(reply.error)
        return volume

    async def _detach(self, volume_id: str, instance_id: str, cid: str) -> None:
        reply = await self._runner.run(
            "volume",
            volume_id,
            DetachVolume(actor=PLACEMENT_ACTOR, at=datetime.now(UTC), instance_id=instance_id),
            cid,
        )
        if reply.error is not None:
            log.warning(
                "could not detach %s from volume %s: %s", instance_id, volume_id, reply.error
            )

    async def _place(self, envelope: CommandEnvelope, command: PlaceInstance) -> Reply:
        instance_id = envelope.aggregate_id
        cid = envelope.correlation_id
        volume = (
            await self._volume(command, instance_id, cid) if command.network_volume_id else None
        )
        try:
            return await self._place_on(
                envelope,
                command,
                volume.datacenter_id if volume else command.datacenter_id,
                volume.host_id if volume else None,
            )
        except GpuWorkerError:
            if volume is not None:
                await self._detach(volume.id, instance_id, cid)
            raise

    def _next_host(
        self,
        command: PlaceInstance,
        datacenter_id: str | None,
        only_host: str | None,
        tried: set[str],
    ) -> HostState | None:
        host_id = best_fit(
            self._fleet.free(command.gpu_type_id),
            self._fleet.states_view(),
            command.gpu_count,
            datacenter_id,
            command.cloud_type,
            self._claiming,
            tried,
            only_host,
        )
        return self._fleet.get(host_id) if host_id else None

    def _claiming_any(self, only_host: str | None) -> bool:
        if only_host is not None:
            return self._claiming[only_host] > 0
        return any(self._claiming.values())

    async def _claim(
        self, host_id: str, instance_id: str, command: PlaceInstance, cid: str
    ) -> tuple[str, list[str]] | None:
        """Allocate on one host. Placements in this process take turns per host (the host
        aggregate would refuse all but one of them anyway), and while one waits its GPUs count
        as taken, so the next placement ranks other hosts first."""
        self._claiming[host_id] += command.gpu_count
        try:
            async with self._host_locks[host_id]:
                return await self._allocate(
                    host_id, instance_id, command.gpu_type_id, command.gpu_count, cid
                )
        finally:
            self._claiming[host_id] -= command.gpu_count

    async def _place_on(
        self,
        envelope: CommandEnvelope,
        command: PlaceInstance,
        datacenter_id: str | None,
        only_host: str | None,
    ) -> Reply:
        instance_id = envelope.aggregate_id
        tried: set[str] = set(command.hosts_without_disk)
        deadline = asyncio.get_running_loop().time() + CLAIM_WAIT_S
        attempts = 0
        while attempts < MAX_HOSTS_TRIED:
            host = self._next_host(command, datacenter_id, only_host, tried)
            if host is None:
                # GPUs other placements are claiming right now may yet be refused and come
                # back: "no capacity" only once nothing is in flight (or after a short wait).
                if self._claiming_any(only_host) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.005)
                    continue
                break
            attempts += 1
            tried.add(host.id)
            allocated = await self._claim(host.id, instance_id, command, envelope.correlation_id)
            if allocated is None:
                continue
            lease_id, gpu_uuids = allocated
            fields: dict[str, Any] = msgspec.structs.asdict(command)
            fields["datacenter_id"] = host.datacenter_id
            del fields["hosts_without_disk"]
            create = CreateInstance(
                **fields, host_id=host.id, gpu_uuids=gpu_uuids, lease_id=lease_id
            )
            reply = await self._runner.run("instance", instance_id, create, envelope.correlation_id)
            if reply.error is not None:
                await self.release(host.id, instance_id, lease_id, envelope.correlation_id)
                raise from_body(reply.error)
            return reply
        raise Conflict(
            no_capacity(
                command.gpu_count,
                command.gpu_type_id,
                command.datacenter_id,
                command.cloud_type,
                len(command.hosts_without_disk),
            )
        )

    async def _start(self, envelope: CommandEnvelope, command: StartPlacedInstance) -> Reply:
        instance_id = envelope.aggregate_id
        state, _seq = await self._runner.current("instance", instance_id)
        if (
            not isinstance(state, InstanceState)
            or state.status == "TERMINATED"
            or not (state.owner_id == command.actor or is_system(command.actor))
        ):
            raise NotFound("instance not found")
        if state.status not in STARTABLE:
            raise Conflict(
                f"cannot start instance {instance_id}: it is {state.status};"
                " start needs STOPPED, EXITED or FAILED"
            )
        async with self._host_locks[state.host_id]:
            allocated = await self._allocate(
                state.host_id,
                instance_id,
                state.gpu_type_id,
                state.gpu_count,
                envelope.correlation_id,
            )
        if allocated is None:
            raise Conflict(
                f"no capacity: host {state.host_id}, where this instance's disk lives, has no"
                f" {state.gpu_count} free {state.gpu_type_id} right now; retry later"
            )
        lease_id, gpu_uuids = allocated
        reply = await self._runner.run(
            "instance",
            instance_id,
            StartInstance(
                actor=command.actor, at=command.at, gpu_uuids=gpu_uuids, lease_id=lease_id
            ),
            envelope.correlation_id,
        )
        if reply.error is not None:
            await self.release(state.host_id, instance_id, lease_id, envelope.correlation_id)
        return reply
