"""GPU instances: what a customer may ask for in each status, and what a host's reports mean.

Observed status: PENDING -> PROVISIONING -> RUNNING -> STOPPING -> STOPPED, RESTARTING,
TERMINATING -> TERMINATED, FAILED, and EXITED (the container ended on its own; start re-runs it).
`desired_status` is what the customer asked for last."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

import msgspec

from events.container import ContainerChanges, ContainerConfig
from events.envelope import Envelope
from events.instance import (
    InstanceCreated,
    InstanceExited,
    InstanceFailed,
    InstanceHostLost,
    InstancePortsPublished,
    InstanceProvisioning,
    InstanceReconfigured,
    InstanceRenamed,
    InstanceRestartRequested,
    InstanceRunning,
    InstanceStartRequested,
    InstanceStopped,
    InstanceStopRequested,
    InstanceTerminated,
    InstanceTerminateRequested,
    PublishedPort,
)
from services.container_input import port_key
from services.deciders.decider import Command, Decider, is_system, reports_for
from services.errors import BadRequest, Conflict, NotFound

Status = Literal[
    "PENDING",
    "PROVISIONING",
    "RUNNING",
    "STOPPING",
    "STOPPED",
    "RESTARTING",
    "TERMINATING",
    "TERMINATED",
    "FAILED",
    "EXITED",
]

# Statuses in which the instance holds its GPUs.
HOLDS_GPUS: frozenset[str] = frozenset(
    {"PENDING", "PROVISIONING", "RUNNING", "STOPPING", "RESTARTING"}
)
STARTABLE: frozenset[str] = frozenset({"STOPPED", "EXITED", "FAILED"})
STOPPABLE: frozenset[str] = frozenset({"PENDING", "PROVISIONING", "RUNNING", "RESTARTING"})


class InstanceState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    datacenter_id: str
    host_id: str
    gpu_uuids: list[str]
    lease_id: str | None
    template_id: str
    container: ContainerConfig
    network_volume_id: str | None
    price_per_hour_micros: int
    rate_card_version: str
    # The container's CPU and memory limits (0 only in read-model rows folded before they existed).
    vcpu_count: int = 0
    memory_in_gb: int = 0
    status: Status
    desired_status: Literal["RUNNING", "STOPPED", "TERMINATED"]
    failure_reason: str | None = None
    # Why the system stopped it (None when its owner did).
    stop_reason: str | None = None
    exit_code: int | None = None
    host_lost: bool = False
    # Bumped when the container must be recreated (image, command, env, ports or, at a start,
    # the owner's SSH keys changed).
    config_generation: int = 0
    # The owner's SSH public keys as of its creation or last start.
    ssh_public_keys: list[str] = []
    # Where its host published its declared ports, as last reported (kept while it is stopped:
    # the host asks for the same host ports again, so addresses stay stable across stop/start).
    public_ip: str | None = None
    published_ports: list[PublishedPort] = []
    created_at: datetime
    last_status_change: datetime
    version: int = 0

    @property
    def actions(self) -> list[str]:
        if self.status in ("TERMINATING", "TERMINATED"):
            return []
        allowed = []
        if self.status in STARTABLE:
            allowed.append("start")
        if self.status in STOPPABLE:
            allowed.append("stop")
        if self.status == "RUNNING":
            allowed.append("restart")
        allowed.append("terminate")
        return allowed


class CreateInstance(Command, frozen=True, kw_only=True):
    """Sent by placement once GPUs are allocated on `host_id` under `lease_id`."""

    name: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    datacenter_id: str
    host_id: str
    gpu_uuids: list[str]
    lease_id: str
    template_id: str
    container: ContainerConfig
    network_volume_id: str | None
    price_per_hour_micros: int
    rate_card_version: str
    vcpu_count: int
    memory_in_gb: int
    ssh_public_keys: list[str] = []


class StartInstance(Command, frozen=True, kw_only=True):
    """Sent by placement once GPUs are re-acquired under a new lease."""

    gpu_uuids: list[str]
    lease_id: str
    ssh_public_keys: list[str] = []


class StopInstance(Command, frozen=True, kw_only=True):
    # Set when the system stops it (billing), shown on the instance as `stopReason`.
    reason: str | None = None


class RestartInstance(Command, frozen=True, kw_only=True):
    pass


class TerminateInstance(Command, frozen=True, kw_only=True):
    pass


class UpdateInstance(Command, frozen=True, kw_only=True):
    name: str | None = None
    # Not the mount path nor the registry credential: those stay what the instance was made with.
    container: ContainerChanges | None = None


Observation = Literal[
    "provisioning", "running", "exited", "failed", "stopped", "terminated", "host_lost"
]


class ReportObservation(Command, frozen=True, kw_only=True):
    """From the instance's host (actor `system:agent:<host>`); `at` is when it happened there."""

    observed: Observation
    exit_code: int | None = None
    reason: str | None = None
    # The lease of the run the host saw this happen to (None from older agents: not checked).
    lease_id: str | None = None
    # With "running": where the host published the declared ports (None: not said).
    public_ip: str | None = None
    ports: list[PublishedPort] | None = None


InstanceCommand = (
    CreateInstance
    | StartInstance
    | StopInstance
    | RestartInstance
    | TerminateInstance
    | UpdateInstance
    | ReportObservation
)


def _owned(state: InstanceState | None, actor: str) -> InstanceState:
    if (
        state is None
        or state.status == "TERMINATED"
        or not (state.owner_id == actor or is_system(actor))
    ):
        raise NotFound("instance not found")
    return state


def _refuse(state: InstanceState, action: str, needs: str) -> Conflict:
    return Conflict(f"cannot {action} instance {state.id}: it is {state.status}; {needs}")


def _observe(state: InstanceState, command: ReportObservation) -> list[msgspec.Struct]:
    # Another host's agent knows nothing about this instance: as for a user, it does not exist.
    if not reports_for(command.actor, state.host_id):
        raise NotFound("instance not found")
    lease = state.lease_id
    if state.status == "TERMINATED":
        return []  # late news about a terminated instance changes nothing
    if (
        command.lease_id is not None
        and command.lease_id != lease
        and command.observed not in ("terminated", "host_lost")
    ):
        # About an earlier run (a report delayed past a stop and a new start): its GPUs and its
        # container are gone; what it says must not stop or fail the run that holds them now.
        return []
    match command.observed:
        case "provisioning":
            return [InstanceProvisioning()] if state.status in ("PENDING", "RESTARTING") else []
        case "running":
            # Only an instance coming up starts running. A stop or terminate already asked for
            # wins over a late "running"; after an exit or a failure the lease is released (its
            # GPUs may be someone else's now) and only a start, with a new lease, brings it back.
            # A running one's report can still say its container's ports moved (made anew).
            if state.status == "RUNNING":
                return _ports_published(state, command)
            if state.status not in ("PENDING", "PROVISIONING", "RESTARTING"):
                return []
            return [InstanceRunning(), *_ports_published(state, command)]
        case "exited":
            # A restart or terminate kills the container on purpose: that death is expected.
            if state.status in ("STOPPED", "EXITED", "FAILED", "RESTARTING", "TERMINATING"):
                return []
            if state.status == "STOPPING":
                return [InstanceStopped(lease_id=lease)]
            code = command.exit_code
            reason = command.reason or f"the container exited with code {code}"
            return [InstanceExited(exit_code=code, reason=reason, lease_id=lease)]
        case "failed":
            # A terminate already asked for wins: the host confirms it with "terminated".
            if state.status in ("FAILED", "TERMINATING"):
                return []
            return [InstanceFailed(reason=command.reason or "failed on its host", lease_id=lease)]
        case "stopped":
            if state.status in ("STOPPED", "TERMINATING"):
                return []
            return [InstanceStopped(lease_id=lease)]
        case "terminated":
            if state.status != "TERMINATING":
                return []
            return [InstanceTerminated(lease_id=lease)]
        case "host_lost":
            return [] if state.host_lost else [InstanceHostLost(since=command.at)]
    raise BadRequest(f"unknown observation {command.observed}")


def _ports_published(state: InstanceState, command: ReportObservation) -> list[msgspec.Struct]:
    """The ports a host reported, if they are news: only the instance's declared ports, on a
    host address and port that can be; anything else in the report is left out (the api's proxy
    connects where these say, so they must name nothing but the declared ports)."""
    if command.ports is None:
        return []
    declared = set(state.container.ports)
    ports = sorted(
        (
            p
            for p in command.ports
            if p.port in declared
            and port_key(p.port) is not None
            and 1 <= p.host_port <= 65535
            and _is_ip(p.host_ip)
        ),
        key=lambda p: p.port,
    )
    public_ip = command.public_ip if command.public_ip and _is_ip(command.public_ip) else None
    if public_ip == state.public_ip and ports == state.published_ports:
        return []
    return [InstancePortsPublished(public_ip=public_ip, ports=ports)]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def decide(state: InstanceState | None, command: InstanceCommand) -> list[msgspec.Struct]:
    if isinstance(command, CreateInstance):
        if state is not None:
            raise Conflict("an instance with this id already exists")
        if command.gpu_count != len(command.gpu_uuids) or command.gpu_count < 1:
            raise BadRequest("gpuCount must match the GPUs allocated")
        if not command.name.strip():
            raise BadRequest("name must not be empty")
        if command.vcpu_count < 1 or command.memory_in_gb < 1:
            raise BadRequest("an instance needs at least 1 vCPU and 1 GB of memory")
        fields = msgspec.structs.asdict(command)
        del fields["actor"], fields["at"]
        return [InstanceCreated(**fields)]
    current = _owned(state, command.actor)
    match command:
        case ReportObservation():
            return _observe(current, command)
        case StartInstance():
            if current.status not in STARTABLE:
                raise _refuse(current, "start", "start needs STOPPED, EXITED or FAILED")
            return [
                InstanceStartRequested(
                    gpu_uuids=command.gpu_uuids,
                    lease_id=command.lease_id,
                    ssh_public_keys=command.ssh_public_keys,
                )
            ]
        case StopInstance():
            if current.status not in STOPPABLE:
                raise _refuse(current, "stop", "only a running or starting instance stops")
            return [InstanceStopRequested(reason=command.reason)]
        case RestartInstance():
            if current.status != "RUNNING":
                raise _refuse(current, "restart", "only a RUNNING instance restarts")
            return [InstanceRestartRequested()]
        case TerminateInstance():
            if current.status == "TERMINATING":
                return []
            return [InstanceTerminateRequested()]
        case UpdateInstance():
            return _update(current, command)
    raise BadRequest(f"unknown command {type(command).__name__}")


def _update(state: InstanceState, command: UpdateInstance) -> list[msgspec.Struct]:
    if state.status == "TERMINATING":
        raise _refuse(state, "change", "it is being terminated")
    events: list[msgspec.Struct] = []
    if command.name is not None and command.name != state.name:
        if not command.name.strip():
            raise BadRequest("name must not be empty")
        events.append(InstanceRenamed(command.name))
    asked = command.container or ContainerChanges()
    if asked.volume_mount_path is not None or asked.registry_auth_id is not None:
        # The api offers neither: they stay what the instance was made with.
        raise BadRequest("an instance's volumeMountPath and registry credential cannot change")
    for field in ("container_disk_in_gb", "volume_in_gb"):
        new, old = getattr(asked, field), getattr(state.container, field)
        if new is not None and new < old:
            camel = "containerDiskInGb" if field == "container_disk_in_gb" else "volumeInGb"
            raise BadRequest(f"{camel} may only grow: it is {old} GB, asked for {new} GB")
    if (changes := asked.differing_from(state.container)) is not None:
        events.append(InstanceReconfigured(container=changes))
    return events


def _status(
    state: InstanceState, status: Status, event: Envelope, **changes: object
) -> InstanceState:
    return msgspec.structs.replace(
        state,
        status=status,
        last_status_change=event.occurred_at
        if status != state.status
        else state.last_status_change,
        version=state.version + 1,
        **changes,
    )


def evolve(state: InstanceState | None, event: Envelope) -> InstanceState:
    data = event.data
    if isinstance(data, InstanceCreated):
        return InstanceState(
            id=event.aggregate.id,
            owner_id=event.actor,
            status="PENDING",
            desired_status="RUNNING",
            created_at=event.occurred_at,
            last_status_change=event.occurred_at,
            version=1,
            **msgspec.structs.asdict(data),
        )
    assert state is not None, f"{event.type} before InstanceCreated"
    released: dict[str, object] = {"gpu_uuids": [], "lease_id": None}
    match data:
        case InstanceStartRequested():
            return _status(
                state,
                "PENDING",
                event,
                desired_status="RUNNING",
                gpu_uuids=data.gpu_uuids,
                lease_id=data.lease_id,
                failure_reason=None,
                stop_reason=None,
                exit_code=None,
                ssh_public_keys=data.ssh_public_keys,
                # New keys reach the container's environment only in a new container.
                config_generation=state.config_generation
                + (data.ssh_public_keys != state.ssh_public_keys),
            )
        case InstanceStopRequested():
            return _status(
                state, "STOPPING", event, desired_status="STOPPED", stop_reason=data.reason
            )
        case InstanceRestartRequested():
            return _status(state, "RESTARTING", event)
        case InstanceTerminateRequested():
            return _status(state, "TERMINATING", event, desired_status="TERMINATED")
        case InstanceRenamed():
            return msgspec.structs.replace(state, name=data.name, version=state.version + 1)
        case InstanceReconfigured():
            return msgspec.structs.replace(
                state,
                container=data.container.apply(state.container),
                config_generation=state.config_generation + 1,
                version=state.version + 1,
            )
        case InstanceProvisioning():
            return _status(state, "PROVISIONING", event, host_lost=False)
        case InstanceRunning():
            return _status(state, "RUNNING", event, host_lost=False, failure_reason=None)
        case InstanceExited():
            return _status(
                state,
                "EXITED",
                event,
                exit_code=data.exit_code,
                failure_reason=data.reason,
                **released,
            )
        case InstanceFailed():
            return _status(state, "FAILED", event, failure_reason=data.reason, **released)
        case InstanceStopped():
            return _status(state, "STOPPED", event, **released)
        case InstanceTerminated():
            return _status(state, "TERMINATED", event, **released)
        case InstanceHostLost():
            return msgspec.structs.replace(state, host_lost=True, version=state.version + 1)
        case InstancePortsPublished():
            return msgspec.structs.replace(
                state,
                public_ip=data.public_ip,
                published_ports=data.ports,
                version=state.version + 1,
            )
    raise TypeError(f"instance cannot apply {event.type}")


INSTANCE = Decider[InstanceState](
    aggregate_type="instance",
    state_type=InstanceState,
    command_type=InstanceCommand,
    decide=decide,
    evolve=evolve,
)
