"""A simulated GPU fleet for property tests: hosts and instances driven in pure code exactly the
way PlacementService, GpuReleaser, HostMonitor and the host agents drive the HOST and INSTANCE
deciders, with no NATS and no store. Each aggregate is its state plus every event decided so far,
applied as DeciderRunner applies a command: decide, wrap each event in an Envelope, fold.

`PureFleet` mirrors, step for step:
- `place`: PlacementService._place (rank candidates on the fleet view, AllocateGpus on the first
  host that accepts, CreateInstance with the lease, ReleaseGpus if CreateInstance is refused);
- `start`: PlacementService._start (only from STARTABLE; a new lease on the instance's own host,
  then StartInstance; ReleaseGpus if StartInstance is refused);
- `deliver`: GpuReleaser.release, for a lease-ending event (InstanceStopped / Exited / Failed /
  Terminated that carries a lease id). Those events are queued in `pending` when decided and
  delivered later, in any order and as often as a test likes (at-least-once delivery).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import strategies as st

from events.catalog import version_of
from events.container import ContainerConfig
from events.envelope import AggregateRef, Envelope
from events.host import HostGpu
from events.ids import new_id
from events.instance import InstanceExited, InstanceFailed, InstanceStopped, InstanceTerminated
from services.deciders.decider import Decider, is_system
from services.deciders.host import (
    HOST,
    AllocateGpus,
    HostState,
    MarkHostLost,
    MarkHostRecovered,
    RegisterHost,
    ReleaseGpus,
)
from services.deciders.instance import (
    INSTANCE,
    STARTABLE,
    CreateInstance,
    InstanceState,
    ReportObservation,
    StartInstance,
)
from services.deciders.placement import candidates
from services.errors import Conflict, GpuWorkerError, NotFound
from services.processes.placement_service import (
    MAX_HOSTS_TRIED,
    PLACEMENT_ACTOR,
    PlaceInstance,
    no_capacity,
)

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
GPU_TYPES = ("NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3")
# A type no host has: every request for it is a "no capacity".
ABSENT_GPU_TYPE = "NVIDIA B200"
DATACENTERS = ("EU-RO-1", "US-TX-3")
CLOUD_TYPES = ("SECURE", "COMMUNITY")
OWNERS = ("0190f1e2-0000-7000-8000-00000000000a", "0190f1e2-0000-7000-8000-00000000000b")
RELEASER_ACTOR = "system:gpu-releaser"
MONITOR_ACTOR = "system:host-monitor"
LEASE_ENDING = (InstanceExited, InstanceFailed, InstanceStopped, InstanceTerminated)


def agent_actor(host_id: str) -> str:
    return f"system:agent:{host_id}"


# --- topology -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    id: str
    datacenter_id: str
    cloud_type: str
    gpus: tuple[HostGpu, ...]

    def register(self, at: datetime) -> RegisterHost:
        return RegisterHost(
            actor=agent_actor(self.id),
            at=at,
            datacenter_id=self.datacenter_id,
            cloud_type=self.cloud_type,
            gpus=list(self.gpus),
            inventory_source="declared",
            runtime="simulated",
        )


@st.composite
def host_specs(draw: st.DrawFn, max_hosts: int = 4, max_gpus: int = 8) -> list[HostSpec]:
    """1..max_hosts hosts of 1..max_gpus GPUs of 1-2 types, in 1-2 data centers, SECURE or
    COMMUNITY."""
    types = GPU_TYPES[: draw(st.integers(1, len(GPU_TYPES)), label="gpu types")]
    datacenters = DATACENTERS[: draw(st.integers(1, len(DATACENTERS)), label="datacenters")]
    specs = []
    for h in range(draw(st.integers(1, max_hosts), label="hosts")):
        kinds = draw(st.lists(st.sampled_from(types), min_size=1, max_size=max_gpus))
        specs.append(
            HostSpec(
                id=f"host-{h}",
                datacenter_id=draw(st.sampled_from(datacenters)),
                cloud_type=draw(st.sampled_from(CLOUD_TYPES)),
                gpus=tuple(
                    HostGpu(index=i, uuid=f"GPU-{h}-{i}", gpu_type_id=kind, memory_mb=81_920)
                    for i, kind in enumerate(kinds)
                ),
            )
        )
    return specs


def place_instance(
    actor: str,
    gpu_type_id: str,
    gpu_count: int,
    datacenter_id: str | None,
    cloud_type: str,
    at: datetime = BASE_TIME,
    name: str = "box",
) -> PlaceInstance:
    return PlaceInstance(
        actor=actor,
        at=at,
        name=name,
        gpu_type_id=gpu_type_id,
        gpu_count=gpu_count,
        cloud_type=cloud_type,
        datacenter_id=datacenter_id,
        template_id="runpod-torch-v21",
        container=ContainerConfig(
            image_name="runpod/pytorch:2.1.0-py3.10-cuda11.8.0-devel-ubuntu22.04",
            ports=["8888/http"],
        ),
        network_volume_id=None,
        price_per_hour_micros=1_990_000,
        rate_card_version="2026-01",
        vcpu_count=16 * gpu_count,
        memory_in_gb=62 * gpu_count,
    )


# Mostly types and places the fleet has, sometimes an absent type or more GPUs than any host.
place_requests = st.builds(
    place_instance,
    actor=st.sampled_from(OWNERS),
    gpu_type_id=st.one_of(
        st.sampled_from(GPU_TYPES), st.sampled_from(GPU_TYPES), st.just(ABSENT_GPU_TYPE)
    ),
    gpu_count=st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9)),
    datacenter_id=st.one_of(st.none(), st.sampled_from(DATACENTERS)),
    cloud_type=st.sampled_from(CLOUD_TYPES),
)


def fitting_requests(specs: list[HostSpec]) -> st.SearchStrategy[PlaceInstance]:
    """Mostly requests shaped like one of the fleet's hosts (its type, cloud, data center or
    any), so that creates succeed often enough to fill the fleet; sometimes anything."""
    shapes = sorted({(g.gpu_type_id, s.cloud_type, s.datacenter_id) for s in specs for g in s.gpus})
    fitting = st.sampled_from(shapes).flatmap(
        lambda shape: st.builds(
            place_instance,
            actor=st.sampled_from(OWNERS),
            gpu_type_id=st.just(shape[0]),
            gpu_count=st.one_of(st.just(1), st.integers(1, 3)),
            datacenter_id=st.sampled_from((None, shape[2])),
            cloud_type=st.just(shape[1]),
        )
    )
    return st.one_of(fitting, fitting, fitting, place_requests)


# --- the runner, without the store ----------------------------------------------------------------


def wrap(ref: AggregateRef, command: Any, data: msgspec.Struct) -> Envelope:
    """As DeciderRunner._wrap does it."""
    return Envelope(
        id=new_id(),
        type=type(data).__name__,
        version=version_of(data),
        aggregate=ref,
        occurred_at=command.at,
        recorded_at=command.at,
        actor=command.actor,
        correlation_id="c",
        causation_id=None,
        data=data,
    )


@dataclass
class Aggregate:
    decider: Decider[Any]
    id: str
    state: Any = None
    events: list[Envelope] = field(default_factory=list)

    def decide(self, command: Any) -> list[msgspec.Struct]:
        """Decide and fold; a refusal (GpuWorkerError) propagates and changes nothing."""
        data = self.decider.decide(self.state, command)
        ref = AggregateRef(self.decider.aggregate_type, self.id)
        envelopes = [wrap(ref, command, d) for d in data]
        self.state = self.decider.fold(self.state, envelopes)
        self.events.extend(envelopes)
        return data


class PureFleet:
    def __init__(self, specs: list[HostSpec]) -> None:
        self.specs = {spec.id: spec for spec in specs}
        self.hosts: dict[str, Aggregate] = {}
        self.instances: dict[str, Aggregate] = {}
        # What placement ranks on: the FleetView. Refreshed by the service's own appends (offer)
        # and by `sync_view` (the subscription catching up); stale in between.
        self.view: dict[str, HostState] = {}
        # Lease-ending events not yet delivered to the releaser, and those delivered already.
        self.pending: list[tuple[str, str]] = []
        self.delivered: list[tuple[str, str]] = []
        self.clock = BASE_TIME
        self._ids = itertools.count(1)
        for spec in specs:
            self.host(spec.id, spec.register(self.now()))
        self.sync_view()

    # --- plumbing ---

    def now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def host(self, host_id: str, command: Any) -> HostState:
        aggregate = self.hosts.setdefault(host_id, Aggregate(HOST, host_id))
        aggregate.decide(command)
        state = aggregate.state
        assert isinstance(state, HostState)
        return state

    def host_state(self, host_id: str) -> HostState:
        state = self.hosts[host_id].state
        assert isinstance(state, HostState)
        return state

    def instance(self, instance_id: str, command: Any) -> list[msgspec.Struct]:
        aggregate = self.instances.get(instance_id) or Aggregate(INSTANCE, instance_id)
        data = aggregate.decide(command)
        if aggregate.state is not None:
            self.instances[instance_id] = aggregate
        for d in data:
            if isinstance(d, LEASE_ENDING) and d.lease_id:
                self.pending.append((instance_id, d.lease_id))
        return data

    def instance_state(self, instance_id: str) -> InstanceState | None:
        aggregate = self.instances.get(instance_id)
        return aggregate.state if aggregate else None

    def sync_view(self) -> None:
        self.view = {host_id: a.state for host_id, a in self.hosts.items()}

    def view_is_fresh(self) -> bool:
        return all(self.view.get(h) is a.state for h, a in self.hosts.items())

    # --- PlacementService ---

    def _allocate(
        self, host_id: str, instance_id: str, gpu_type_id: str, count: int
    ) -> tuple[str, list[str]] | None:
        lease_id = self.new_id("lease")
        command = AllocateGpus(
            actor=PLACEMENT_ACTOR,
            at=self.now(),
            instance_id=instance_id,
            lease_id=lease_id,
            gpu_type_id=gpu_type_id,
            count=count,
        )
        try:
            state = self.host(host_id, command)
        except GpuWorkerError as err:
            if err.code == 409:
                return None
            raise GpuWorkerError(err.message) from err
        self.view[host_id] = state
        return lease_id, state.held_by(instance_id)[lease_id]

    def placement_release(self, host_id: str, instance_id: str, lease_id: str) -> None:
        command = ReleaseGpus(
            actor=PLACEMENT_ACTOR, at=self.now(), instance_id=instance_id, lease_id=lease_id
        )
        # A refusal is logged by the service; the GPU sweeper frees an orphaned lease later.
        with contextlib.suppress(GpuWorkerError):
            self.view[host_id] = self.host(host_id, command)

    def place(
        self, instance_id: str, command: PlaceInstance, between: Callable[[], None] | None = None
    ) -> InstanceState:
        """PlaceInstance; raises what the service would answer with. `between` runs after the
        allocation and before CreateInstance: a concurrent command landing in that gap."""
        hosts = candidates(
            self.view.values(),
            command.gpu_type_id,
            command.gpu_count,
            command.datacenter_id,
            command.cloud_type,
        )
        for host in hosts[:MAX_HOSTS_TRIED]:
            allocated = self._allocate(host.id, instance_id, command.gpu_type_id, command.gpu_count)
            if allocated is None:
                continue
            lease_id, gpu_uuids = allocated
            if between is not None:
                between()
            fields: dict[str, Any] = msgspec.structs.asdict(command)
            fields["datacenter_id"] = host.datacenter_id
            del fields["hosts_without_disk"]
            create = CreateInstance(
                **fields, host_id=host.id, gpu_uuids=gpu_uuids, lease_id=lease_id
            )
            try:
                self.instance(instance_id, create)
            except GpuWorkerError:
                self.placement_release(host.id, instance_id, lease_id)
                raise
            state = self.instance_state(instance_id)
            assert state is not None
            return state
        raise Conflict(
            no_capacity(
                command.gpu_count, command.gpu_type_id, command.datacenter_id, command.cloud_type
            )
        )

    def start(
        self, instance_id: str, actor: str, between: Callable[[], None] | None = None
    ) -> InstanceState:
        """StartPlacedInstance; `between` runs after the allocation, before StartInstance."""
        state = self.instance_state(instance_id)
        if (
            not isinstance(state, InstanceState)
            or state.status == "TERMINATED"
            or not (state.owner_id == actor or is_system(actor))
        ):
            raise NotFound("instance not found")
        if state.status not in STARTABLE:
            raise Conflict(
                f"cannot start instance {instance_id}: it is {state.status};"
                " start needs STOPPED, EXITED or FAILED"
            )
        allocated = self._allocate(state.host_id, instance_id, state.gpu_type_id, state.gpu_count)
        if allocated is None:
            raise Conflict(
                f"no capacity: host {state.host_id}, where this instance's disk lives, has no"
                f" {state.gpu_count} free {state.gpu_type_id} right now; retry later"
            )
        lease_id, gpu_uuids = allocated
        if between is not None:
            between()
        command = StartInstance(actor=actor, at=self.now(), gpu_uuids=gpu_uuids, lease_id=lease_id)
        try:
            self.instance(instance_id, command)
        except GpuWorkerError:
            self.placement_release(state.host_id, instance_id, lease_id)
            raise
        started = self.instance_state(instance_id)
        assert started is not None
        return started

    # --- GpuReleaser ---

    def deliver(self, instance_id: str, lease_id: str) -> list[msgspec.Struct]:
        """GpuReleaser.release for one lease-ending event; returns the host's events."""
        state = self.instance_state(instance_id)
        if not isinstance(state, InstanceState):
            return []
        command = ReleaseGpus(
            actor=RELEASER_ACTOR, at=self.now(), instance_id=instance_id, lease_id=lease_id
        )
        aggregate = self.hosts[state.host_id]
        data = aggregate.decide(command)
        self.view[state.host_id] = aggregate.state
        return data

    # --- the host agent and the host monitor ---

    def report(self, instance_id: str, observed: Any, **extra: Any) -> list[msgspec.Struct]:
        state = self.instance_state(instance_id)
        assert state is not None
        command = ReportObservation(
            actor=agent_actor(state.host_id), at=self.now(), observed=observed, **extra
        )
        return self.instance(instance_id, command)

    def mark_lost(self, host_id: str) -> None:
        command = MarkHostLost(actor=MONITOR_ACTOR, at=self.now(), reason="no heartbeat for 11s")
        self.view[host_id] = self.host(host_id, command)

    def mark_recovered(self, host_id: str, by_registration: bool) -> None:
        command = (
            self.specs[host_id].register(self.now())
            if by_registration
            else MarkHostRecovered(actor=MONITOR_ACTOR, at=self.now())
        )
        self.view[host_id] = self.host(host_id, command)
