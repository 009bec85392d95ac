"""Saved registry credentials. The decider only ever sees ciphertext."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.envelope import Envelope
from events.registry_auth import RegistryAuthCreated, RegistryAuthDeleted
from services.deciders.decider import Command, Decider
from services.errors import BadRequest, Conflict, NotFound


def sealed_for(auth_id: str) -> str:
    """What a credential's password ciphertext is bound to (AES-GCM associated data)."""
    return f"registry_auth:{auth_id}"


class RegistryAuthState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    username: str
    password_ciphertext: str
    created_at: datetime
    deleted: bool = False
    version: int = 0


class CreateRegistryAuth(Command, frozen=True, kw_only=True):
    name: str
    username: str
    password_ciphertext: str


class DeleteRegistryAuth(Command, frozen=True, kw_only=True):
    pass


RegistryAuthCommand = CreateRegistryAuth | DeleteRegistryAuth


def decide(state: RegistryAuthState | None, command: RegistryAuthCommand) -> list[msgspec.Struct]:
    match command:
        case CreateRegistryAuth():
            if state is not None:
                raise Conflict("a registry credential with this id already exists")
            if not command.name.strip() or not command.username.strip():
                raise BadRequest("name and username must not be empty")
            return [
                RegistryAuthCreated(
                    name=command.name,
                    username=command.username,
                    password_ciphertext=command.password_ciphertext,
                )
            ]
        case DeleteRegistryAuth():
            if state is None or state.deleted or state.owner_id != command.actor:
                raise NotFound("registry credential not found")
            return [RegistryAuthDeleted()]
    raise BadRequest(f"unknown command {type(command).__name__}")


def evolve(state: RegistryAuthState | None, event: Envelope) -> RegistryAuthState:
    data = event.data
    if isinstance(data, RegistryAuthCreated):
        return RegistryAuthState(
            id=event.aggregate.id,
            owner_id=event.actor,
            created_at=event.occurred_at,
            version=1,
            **msgspec.structs.asdict(data),
        )
    assert state is not None, f"{event.type} before RegistryAuthCreated"
    if isinstance(data, RegistryAuthDeleted):
        return msgspec.structs.replace(state, deleted=True, version=state.version + 1)
    raise TypeError(f"registry auth cannot apply {event.type}")


REGISTRY_AUTH = Decider[RegistryAuthState](
    aggregate_type="registry_auth",
    state_type=RegistryAuthState,
    command_type=RegistryAuthCommand,
    decide=decide,
    evolve=evolve,
)
