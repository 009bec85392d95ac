"""Container templates: who may create, change and delete them, and what they hold."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.container import ContainerChanges, ContainerConfig
from events.envelope import Envelope
from events.template import TemplateCreated, TemplateDeleted, TemplateUpdated
from services.deciders.decider import Command, Decider, is_system
from services.errors import BadRequest, Conflict, Forbidden, NotFound

MAX_DISK_GB = 4000


class TemplateState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    container: ContainerConfig
    readme: str
    is_public: bool
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    version: int = 0


class CreateTemplate(Command, frozen=True, kw_only=True):
    name: str
    container: ContainerConfig
    readme: str = ""
    is_public: bool = False


class UpdateTemplate(Command, frozen=True, kw_only=True):
    name: str | None = None
    container: ContainerChanges | None = None
    readme: str | None = None


class DeleteTemplate(Command, frozen=True, kw_only=True):
    pass


TemplateCommand = CreateTemplate | UpdateTemplate | DeleteTemplate


def _check_values(name: str | None, container_disk: int | None, volume: int | None) -> None:
    if name is not None and not name.strip():
        raise BadRequest("name must not be empty")
    if container_disk is not None and not 1 <= container_disk <= MAX_DISK_GB:
        raise BadRequest(f"containerDiskInGb must be between 1 and {MAX_DISK_GB}")
    if volume is not None and not 0 <= volume <= MAX_DISK_GB:
        raise BadRequest(f"volumeInGb must be between 0 and {MAX_DISK_GB}")


def _visible(state: TemplateState | None, actor: str) -> TemplateState:
    if (
        state is None
        or state.deleted
        or not (state.is_public or state.owner_id == actor or is_system(actor))
    ):
        raise NotFound("template not found")
    return state


def _writable(state: TemplateState | None, actor: str) -> TemplateState:
    visible = _visible(state, actor)
    if visible.owner_id != actor and not is_system(actor):
        raise Forbidden(f"template {visible.id} is built in and read-only; create your own instead")
    return visible


def decide(state: TemplateState | None, command: TemplateCommand) -> list[msgspec.Struct]:
    match command:
        case CreateTemplate():
            if state is not None:
                raise Conflict("a template with this id already exists")
            if command.is_public and not is_system(command.actor):
                raise Forbidden("only built-in templates are public")
            container = command.container
            _check_values(command.name, container.container_disk_in_gb, container.volume_in_gb)
            return [
                TemplateCreated(
                    name=command.name,
                    container=container,
                    readme=command.readme,
                    is_public=command.is_public,
                )
            ]
        case UpdateTemplate():
            current = _writable(state, command.actor)
            asked = command.container or ContainerChanges()
            _check_values(command.name, asked.container_disk_in_gb, asked.volume_in_gb)
            changes: dict[str, Any] = {
                field: getattr(command, field)
                for field in ("name", "readme")
                if getattr(command, field) not in (None, getattr(current, field))
            }
            if (container_changes := asked.differing_from(current.container)) is not None:
                changes["container"] = container_changes
            return [TemplateUpdated(**changes)] if changes else []
        case DeleteTemplate():
            _writable(state, command.actor)
            return [TemplateDeleted()]
    raise BadRequest(f"unknown command {type(command).__name__}")


def evolve(state: TemplateState | None, event: Envelope) -> TemplateState:
    data = event.data
    if isinstance(data, TemplateCreated):
        return TemplateState(
            id=event.aggregate.id,
            owner_id=event.actor,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            version=1,
            **msgspec.structs.asdict(data),
        )
    assert state is not None, f"{event.type} before TemplateCreated"
    if isinstance(data, TemplateUpdated):
        changes: dict[str, Any] = {"name": data.name, "readme": data.readme}
        if data.container is not None:
            changes["container"] = data.container.apply(state.container)
        return msgspec.structs.replace(
            state,
            **{k: v for k, v in changes.items() if v is not None},
            updated_at=event.occurred_at,
            version=state.version + 1,
        )
    if isinstance(data, TemplateDeleted):
        return msgspec.structs.replace(
            state, deleted=True, updated_at=event.occurred_at, version=state.version + 1
        )
    raise TypeError(f"template cannot apply {event.type}")


TEMPLATE = Decider[TemplateState](
    aggregate_type="template",
    state_type=TemplateState,
    command_type=TemplateCommand,
    decide=decide,
    evolve=evolve,
)
