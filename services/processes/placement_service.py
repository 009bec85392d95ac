"""Placement: allocate GPUs on a host and create (or start) the instance that holds them, as one
atomic decision (see `PlacementService`); and the same for a serverless worker (`place_worker`),
whose GPUs come from the same host aggregates and leases, so a worker never shares a GPU with an
instance."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.container import ContainerConfig
from events.endpoint import WorkerPlacement
from events.envelope import AggregateRef
from events.ids import derived_id
from events.instance import LEGACY_RAM_GB_PER_GPU, LEGACY_VCPU_PER_GPU
from ledger.rate_card import first_resources, in_force
from services.command_wire import CommandEnvelope, Reply
from services.deciders.decider import Command, is_system
from services.deciders.endpoint import EndpointState, PlaceWorker
from services.deciders.host import CLOUD_TYPES, AllocateGpus, HostState
from services.deciders.instance import (
    STARTABLE,
    CreateInstance,
    InstanceState,
    StartInstance,
)
from services.deciders.placement import best_fit
from services.deciders.volume import AttachVolume, VolumeState
from services.errors import BadRequest, Conflict, ErrorBody, GpuWorkerError, NotFound
from services.processes.fleet_view import FleetView
from services.processes.runner import DeciderRunner, Decision
from services.role_metrics import PLACEMENT_KINDS, PLACEMENT_SECONDS

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
    container: ContainerConfig
    network_volume_id: str | None
    price_per_hour_micros: int
    rate_card_version: str
    vcpu_count: int
    memory_in_gb: int
    # Hosts the api found without free disk for the instance's own disks: not tried.
    hosts_without_disk: list[str] = []
    # The owner's SSH public keys (the api read them from the account).
    ssh_public_keys: list[str] = []


class StartPlacedInstance(Command, frozen=True, kw_only=True):
    ssh_public_keys: list[str] = []


PlacementCommand = PlaceInstance | StartPlacedInstance


class PlaceWorkerOn(Command, frozen=True, kw_only=True):
    """The autoscaler's request for a worker (in process: never on the wire); placement chooses
    the host, its GPUs and the lease."""

    worker_id: str
    active: bool = False
    reason: str


def _resources(gpu_type_id: str) -> tuple[int, int]:
    """vCPUs and GB of RAM per GPU of the type, from the rate card (as for instances)."""
    gpu = in_force(datetime.now(UTC)).gpu(gpu_type_id)
    resources = (gpu.resources if gpu else None) or first_resources(gpu_type_id)
    if resources is None:
        return LEGACY_VCPU_PER_GPU, LEGACY_RAM_GB_PER_GPU
    return resources.vcpu_per_gpu, resources.ram_gb_per_gpu


# The error type a host's refusal to allocate travels under, so placement tries the next host.
NO_GPUS = "no_gpus_on_host"


class _NoGpus(GpuWorkerError):
    code = 409

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, type=NO_GPUS, message=self.message)


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
    """Each placement is one atomic decision: the volume's attach, the host's GPU lease and the
    instance's creation (or start) are appended together or not at all, so no crash can leave a
    lease without its instance or a volume attached to an instance that never existed."""

    def __init__(self, runner: DeciderRunner, fleet: FleetView) -> None:
        self._runner = runner
        self._fleet = fleet
        self._decode = msgspec.json.Decoder(PlacementCommand).decode
        self._claiming: defaultdict[str, int] = defaultdict(int)
        self._host_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # One timer per kind, made up front: its series exist from the start (at 0), and no
        # placement looks its label up again.
        self._timers = {kind: PLACEMENT_SECONDS.labels(kind) for kind in PLACEMENT_KINDS}

    async def handle(self, envelope: CommandEnvelope) -> Reply:
        try:
            command = self._decode(envelope.command)
            if isinstance(command, PlaceInstance):
                with self._timers["instance"].time():
                    return await self._place(envelope, command)
            with self._timers["instance_start"].time():
                return await self._start(envelope, command)
        except GpuWorkerError as err:
            return Reply(error=err.body())

    async def _attach(
        self, decision: Decision, command: PlaceInstance, instance_id: str
    ) -> VolumeState:
        """The network volume pins the instance to the volume's host, and a delete of the volume
        racing with this create is refused by the volume aggregate."""
        assert command.network_volume_id is not None
        volume = await decision.state("volume", command.network_volume_id)
        if not isinstance(volume, VolumeState) or volume.owner_id != command.actor:
            raise BadRequest(f"field `networkVolumeId`: no volume {command.network_volume_id!r}")
        if command.datacenter_id is not None and command.datacenter_id != volume.datacenter_id:
            raise BadRequest(
                f"field `networkVolumeId`: volume {volume.id} is in {volume.datacenter_id},"
                f" not in the requested data center {command.datacenter_id}"
            )
        try:
            await decision.decide(
                "volume",
                volume.id,
                AttachVolume(actor=command.actor, at=command.at, instance_id=instance_id),
            )
        except NotFound:  # deleted since it was read: the field is what's wrong
            raise BadRequest(
                f"field `networkVolumeId`: no volume {command.network_volume_id!r}"
            ) from None
        return volume

    async def _place(self, envelope: CommandEnvelope, command: PlaceInstance) -> Reply:
        instance_id = envelope.aggregate_id
        target = AggregateRef("instance", instance_id)
        volume: VolumeState | None = None
        if command.network_volume_id is not None:
            # Read first (outside the decision) only to know where the instance must go.
            found, _seq = await self._runner.current("volume", command.network_volume_id)
            volume = found if isinstance(found, VolumeState) else None
            if volume is None or volume.owner_id != command.actor:
                raise BadRequest(
                    f"field `networkVolumeId`: no volume {command.network_volume_id!r}"
                )
        datacenter_id = volume.datacenter_id if volume else command.datacenter_id
        only_host = volume.host_id if volume else None
        lease_id = derived_id("lease", envelope.id)
        # Hosts the api found without room for the instance's disks are no candidates.
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
            plan = self._creation(command, instance_id, lease_id, host)
            reply = await self._claim(host.id, command.gpu_count, envelope, target, plan)
            if reply.error is not None and reply.error.type == NO_GPUS:
                continue
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

    def _creation(
        self, command: PlaceInstance, instance_id: str, lease_id: str, host: HostState
    ) -> Callable[[Decision], Awaitable[None]]:
        async def plan(decision: Decision) -> None:
            await decision.ensure_new("instance", instance_id)
            if command.network_volume_id is not None:
                await self._attach(decision, command, instance_id)
            held = await self._allocate(
                decision, host.id, instance_id, lease_id, command.gpu_type_id, command.gpu_count
            )
            fields: dict[str, Any] = msgspec.structs.asdict(command)
            fields["datacenter_id"] = host.datacenter_id
            del fields["hosts_without_disk"]
            await decision.decide(
                "instance",
                instance_id,
                CreateInstance(**fields, host_id=host.id, gpu_uuids=held, lease_id=lease_id),
            )

        return plan

    async def place_worker(
        self, endpoint: EndpointState, command: PlaceWorkerOn, command_id: str
    ) -> Reply:
        """A worker for `endpoint` on the first host with free GPUs of its types, tried in the
        endpoint's order of preference (any cloud, its data center if it names one, the host of
        its network volume if it has one); the lease and the worker are one atomic append.
        Answers the endpoint's state, or 409 when no host has room (or the endpoint refuses)."""
        with self._timers["worker"].time():
            return await self._place_worker(endpoint, command, command_id)

    async def _place_worker(
        self, endpoint: EndpointState, command: PlaceWorkerOn, command_id: str
    ) -> Reply:
        settings = endpoint.settings
        only_host = None
        if settings.network_volume_id is not None:
            volume, _seq = await self._runner.current("volume", settings.network_volume_id)
            if not isinstance(volume, VolumeState) or volume.status == "DELETED":
                raise Conflict(f"its network volume {settings.network_volume_id} is gone")
            only_host = volume.host_id
        target = AggregateRef("endpoint", endpoint.id)
        envelope = CommandEnvelope.wrap(
            endpoint.id, command, f"autoscale:{endpoint.id}", command_id
        )
        lease_id = derived_id("lease", command_id)
        tried: set[tuple[str, str]] = set()
        for gpu_type_id in settings.gpu_ids:
            for cloud_type in CLOUD_TYPES:
                for _ in range(MAX_HOSTS_TRIED):
                    host_id = best_fit(
                        self._fleet.free(gpu_type_id),
                        self._fleet.states_view(),
                        settings.gpu_count,
                        settings.datacenter_id,
                        cloud_type,
                        self._claiming,
                        {h for h, t in tried if t == gpu_type_id},
                        only_host,
                    )
                    if host_id is None:
                        break
                    tried.add((host_id, gpu_type_id))
                    plan = self._worker_plan(
                        endpoint, command, host_id, gpu_type_id, lease_id, command.worker_id
                    )
                    reply = await self._claim(host_id, settings.gpu_count, envelope, target, plan)
                    if reply.error is not None and reply.error.type == NO_GPUS:
                        continue
                    return reply
        raise Conflict(
            f"no capacity: no host has {settings.gpu_count} free"
            f" {' or '.join(settings.gpu_ids)} GPU{'s' if settings.gpu_count > 1 else ''}"
            f"{' in ' + settings.datacenter_id if settings.datacenter_id else ''} right now"
        )

    def _worker_plan(
        self,
        endpoint: EndpointState,
        command: PlaceWorkerOn,
        host_id: str,
        gpu_type_id: str,
        lease_id: str,
        worker_id: str,
    ) -> Callable[[Decision], Awaitable[None]]:
        count = endpoint.settings.gpu_count
        resources = _resources(gpu_type_id)

        async def plan(decision: Decision) -> None:
            await decision.ensure_new("endpoint", endpoint.id)
            held = await self._allocate(
                decision, host_id, worker_id, lease_id, gpu_type_id, count, endpoint.id
            )
            placement = WorkerPlacement(
                host_id=host_id,
                gpu_type_id=gpu_type_id,
                gpu_count=count,
                gpu_uuids=held,
                lease_id=lease_id,
                vcpu_count=resources[0] * count,
                memory_in_gb=resources[1] * count,
            )
            await decision.decide(
                "endpoint",
                endpoint.id,
                PlaceWorker(
                    actor=command.actor,
                    at=command.at,
                    worker_id=worker_id,
                    placement=placement,
                    active=command.active,
                    reason=command.reason,
                ),
            )

        return plan

    async def _allocate(
        self,
        decision: Decision,
        host_id: str,
        instance_id: str,
        lease_id: str,
        gpu_type_id: str,
        count: int,
        endpoint_id: str | None = None,
    ) -> list[str]:
        try:
            state = await decision.decide(
                "host",
                host_id,
                AllocateGpus(
                    actor=PLACEMENT_ACTOR,
                    at=datetime.now(UTC),
                    instance_id=instance_id,
                    lease_id=lease_id,
                    gpu_type_id=gpu_type_id,
                    count=count,
                    endpoint_id=endpoint_id,
                ),
            )
        except Conflict as exc:
            raise _NoGpus(exc.message) from None
        assert isinstance(state, HostState)
        return state.held_by(instance_id)[lease_id]

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
        self,
        host_id: str,
        gpu_count: int,
        envelope: CommandEnvelope,
        target: AggregateRef,
        plan: Callable[[Decision], Awaitable[None]],
    ) -> Reply:
        """Decide and commit on one host. Placements in this process take turns per host (the
        host aggregate would refuse all but one of them anyway), and while one waits its GPUs
        count as taken, so the next placement ranks other hosts first."""
        self._claiming[host_id] += gpu_count
        try:
            async with self._host_locks[host_id]:
                reply = await self._runner.decide(envelope, target, plan)
        finally:
            self._claiming[host_id] -= gpu_count
        self._offer_host(host_id)
        return reply

    def _offer_host(self, host_id: str) -> None:
        known = self._runner.known(AggregateRef("host", host_id))
        if isinstance(known.state, HostState):
            self._fleet.offer(known.state, known.sequence)

    async def _start(self, envelope: CommandEnvelope, command: StartPlacedInstance) -> Reply:
        instance_id = envelope.aggregate_id
        target = AggregateRef("instance", instance_id)
        lease_id = derived_id("lease", envelope.id)
        state, _seq = await self._runner.current("instance", instance_id)
        if (
            not isinstance(state, InstanceState)
            or state.status == "TERMINATED"
            or not (state.owner_id == command.actor or is_system(command.actor))
        ):
            raise NotFound("instance not found")
        host_id = state.host_id

        async def plan(decision: Decision) -> None:
            await decision.ensure_new("instance", instance_id)
            current = await decision.state("instance", instance_id)
            assert isinstance(current, InstanceState)
            if current.status not in STARTABLE:
                raise Conflict(
                    f"cannot start instance {instance_id}: it is {current.status};"
                    " start needs STOPPED, EXITED or FAILED"
                )
            try:
                held = await self._allocate(
                    decision,
                    host_id,
                    instance_id,
                    lease_id,
                    current.gpu_type_id,
                    current.gpu_count,
                )
            except _NoGpus:
                raise Conflict(
                    f"no capacity: host {host_id}, where this instance's disk lives, has no"
                    f" {current.gpu_count} free {current.gpu_type_id} right now; retry later"
                ) from None
            await decision.decide(
                "instance",
                instance_id,
                StartInstance(
                    actor=command.actor,
                    at=command.at,
                    gpu_uuids=held,
                    lease_id=lease_id,
                    ssh_public_keys=command.ssh_public_keys,
                ),
            )

        async with self._host_locks[host_id]:
            reply = await self._runner.decide(envelope, target, plan)
        self._offer_host(host_id)
        return reply
