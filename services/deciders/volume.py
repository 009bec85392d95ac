"""Network volumes: CREATING -> AVAILABLE -> DELETING -> DELETED, or FAILED.

Sizes only grow. A volume attached to any instance that is not terminated cannot be deleted; the
attach and the delete meet on this aggregate, so they cannot interleave badly."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from events.envelope import Envelope
from events.volume import (
    VolumeAttached,
    VolumeCreated,
    VolumeDeleted,
    VolumeDeleteRequested,
    VolumeDetached,
    VolumeGrown,
    VolumeProvisioned,
    VolumeProvisioningFailed,
    VolumeRenamed,
    VolumeResized,
)
from services.deciders.decider import Command, Decider, is_system, reports_for
from services.errors import BadRequest, Conflict, NotFound

MIN_SIZE_GB = 10
MAX_SIZE_GB = 4000

VolumeStatus = Literal["CREATING", "AVAILABLE", "DELETING", "DELETED", "FAILED"]


class VolumeState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    size_gb: int
    # What the storage host has actually provisioned (lags size_gb during a resize).
    provisioned_gb: int = 0
    datacenter_id: str
    host_id: str
    price_per_gb_month_micros: int
    rate_card_version: str
    status: VolumeStatus = "CREATING"
    attached: tuple[str, ...] = ()
    failure_reason: str | None = None
    created_at: datetime
    version: int = 0


class CreateVolume(Command, frozen=True, kw_only=True):
    name: str
    size_gb: int
    datacenter_id: str
    host_id: str
    price_per_gb_month_micros: int
    rate_card_version: str


class UpdateVolume(Command, frozen=True, kw_only=True):
    name: str | None = None
    size_gb: int | None = None


class DeleteVolume(Command, frozen=True, kw_only=True):
    pass


class AttachVolume(Command, frozen=True, kw_only=True):
    """From placement, before an instance that mounts the volume is created."""

    instance_id: str


class DetachVolume(Command, frozen=True, kw_only=True):
    """From the instance clean-up once the instance is terminated (or never came to be)."""

    instance_id: str


class ReportVolume(Command, frozen=True, kw_only=True):
    """From the storage host (actor `system:agent:<host>`); `at` is when it happened there."""

    observed: Literal["provisioned", "resized", "failed", "deleted"]
    size_gb: int | None = None
    reason: str | None = None


VolumeCommand = (
    CreateVolume | UpdateVolume | DeleteVolume | AttachVolume | DetachVolume | ReportVolume
)


def _check_size(size_gb: int) -> None:
    if not MIN_SIZE_GB <= size_gb <= MAX_SIZE_GB:
        raise BadRequest(f"size must be between {MIN_SIZE_GB} and {MAX_SIZE_GB} GB")


def _visible(state: VolumeState | None, actor: str) -> VolumeState:
    if (
        state is None
        or state.status == "DELETED"
        or not (state.owner_id == actor or is_system(actor))
    ):
        raise NotFound("volume not found")
    return state


def decide(state: VolumeState | None, command: VolumeCommand) -> list[msgspec.Struct]:
    if isinstance(command, CreateVolume):
        if state is not None:
            raise Conflict("a volume with this id already exists")
        _check_size(command.size_gb)
        if not command.name.strip():
            raise BadRequest("name must not be empty")
        fields = msgspec.structs.asdict(command)
        del fields["actor"], fields["at"]
        return [VolumeCreated(**fields)]
    current = _visible(state, command.actor)
    match command:
        case UpdateVolume():
            if current.status in ("DELETING", "DELETED"):
                raise Conflict(f"volume {current.id} is being deleted")
            events: list[msgspec.Struct] = []
            if command.name is not None and command.name != current.name:
                if not command.name.strip():
                    raise BadRequest("name must not be empty")
                events.append(VolumeRenamed(command.name))
            if command.size_gb is not None and command.size_gb != current.size_gb:
                if command.size_gb < current.size_gb:
                    raise BadRequest(
                        f"size: volumes only grow; it is {current.size_gb} GB, asked for"
                        f" {command.size_gb} GB"
                    )
                _check_size(command.size_gb)
                events.append(VolumeGrown(size_gb=command.size_gb))
            return events
        case DeleteVolume():
            if current.status == "DELETING":
                return []
            if current.attached:
                raise Conflict(
                    f"volume {current.id} is attached to instance(s) {', '.join(current.attached)};"
                    " terminate them first"
                )
            return [VolumeDeleteRequested()]
        case AttachVolume():
            if current.status not in ("CREATING", "AVAILABLE"):
                raise Conflict(f"volume {current.id} is {current.status} and cannot be attached")
            if command.instance_id in current.attached:
                return []
            return [VolumeAttached(instance_id=command.instance_id)]
        case DetachVolume():
            if command.instance_id not in current.attached:
                return []
            return [VolumeDetached(instance_id=command.instance_id)]
        case ReportVolume():
            return _observe(current, command)
    raise BadRequest(f"unknown command {type(command).__name__}")


def _observe(state: VolumeState, command: ReportVolume) -> list[msgspec.Struct]:
    if not reports_for(command.actor, state.host_id):
        raise NotFound("volume not found")
    match command.observed:
        case "provisioned":
            return [VolumeProvisioned()] if state.status == "CREATING" else []
        case "resized":
            # Progress only, and never past what the volume was asked to be: a stale or bogus
            # report must not leave provisioned_gb above size_gb.
            size = command.size_gb or 0
            if state.provisioned_gb < size <= state.size_gb:
                return [VolumeResized(size_gb=size)]
            return []
        case "failed":
            if state.status != "CREATING":
                return []
            return [VolumeProvisioningFailed(reason=command.reason or "provisioning failed")]
        case "deleted":
            return [VolumeDeleted()] if state.status == "DELETING" else []
    raise BadRequest(f"unknown observation {command.observed}")


def evolve(state: VolumeState | None, event: Envelope) -> VolumeState:
    data = event.data
    if isinstance(data, VolumeCreated):
        return VolumeState(
            id=event.aggregate.id,
            owner_id=event.actor,
            created_at=event.occurred_at,
            version=1,
            **msgspec.structs.asdict(data),
        )
    assert state is not None, f"{event.type} before VolumeCreated"
    version = state.version + 1
    match data:
        case VolumeRenamed():
            return msgspec.structs.replace(state, name=data.name, version=version)
        case VolumeGrown():
            return msgspec.structs.replace(state, size_gb=data.size_gb, version=version)
        case VolumeAttached():
            attached = (*state.attached, data.instance_id)
            return msgspec.structs.replace(state, attached=attached, version=version)
        case VolumeDetached():
            attached = tuple(i for i in state.attached if i != data.instance_id)
            return msgspec.structs.replace(state, attached=attached, version=version)
        case VolumeDeleteRequested():
            return msgspec.structs.replace(state, status="DELETING", version=version)
        case VolumeProvisioned():
            return msgspec.structs.replace(
                state, status="AVAILABLE", provisioned_gb=state.size_gb, version=version
            )
        case VolumeResized():
            return msgspec.structs.replace(state, provisioned_gb=data.size_gb, version=version)
        case VolumeProvisioningFailed():
            return msgspec.structs.replace(
                state, status="FAILED", failure_reason=data.reason, version=version
            )
        case VolumeDeleted():
            return msgspec.structs.replace(state, status="DELETED", attached=(), version=version)
    raise TypeError(f"volume cannot apply {event.type}")


VOLUME = Decider[VolumeState](
    aggregate_type="volume",
    state_type=VolumeState,
    command_type=VolumeCommand,
    decide=decide,
    evolve=evolve,
)
