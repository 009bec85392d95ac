"""API keys. The decider sees the key's hash only, and refuses anything that is not one, so that a
clear key can never be written into an event by mistake."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from events.api_key import ApiKeyCreated, ApiKeyRevoked
from events.envelope import Envelope
from services.deciders.decider import Command, Decider
from services.errors import BadRequest, Conflict, NotFound

MAX_NAME_LENGTH = 128
# HMAC-SHA256, hex: what services/security/api_keys.py stores.
_HASH = re.compile(r"^[0-9a-f]{64}$")
NOT_FOUND = "API key not found"


class ApiKeyState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    key_hash: str
    created_at: datetime
    revoked: bool = False
    version: int = 0


class CreateApiKey(Command, frozen=True, kw_only=True):
    name: str
    key_hash: str


class RevokeApiKey(Command, frozen=True, kw_only=True):
    pass


ApiKeyCommand = CreateApiKey | RevokeApiKey


def decide(state: ApiKeyState | None, command: ApiKeyCommand) -> list[msgspec.Struct]:
    match command:
        case CreateApiKey():
            if state is not None:
                raise Conflict("an API key with this id already exists")
            name = command.name.strip()
            if not name or len(name) > MAX_NAME_LENGTH:
                raise BadRequest(f"field `name`: 1 to {MAX_NAME_LENGTH} characters, not blank")
            if not _HASH.match(command.key_hash):
                raise BadRequest("an API key is stored as its HMAC-SHA256 (64 hex digits) only")
            return [ApiKeyCreated(name=name, key_hash=command.key_hash)]
        case RevokeApiKey():
            # Another user's key, or one already revoked, does not exist for this actor.
            if state is None or state.revoked or state.owner_id != command.actor:
                raise NotFound(NOT_FOUND)
            return [ApiKeyRevoked()]
    raise BadRequest(f"unknown command {type(command).__name__}")


def evolve(state: ApiKeyState | None, event: Envelope) -> ApiKeyState:
    data = event.data
    if isinstance(data, ApiKeyCreated):
        return ApiKeyState(
            id=event.aggregate.id,
            owner_id=event.actor,
            name=data.name,
            key_hash=data.key_hash,
            created_at=event.occurred_at,
            version=1,
        )
    assert state is not None, f"{event.type} before ApiKeyCreated"
    if isinstance(data, ApiKeyRevoked):
        return msgspec.structs.replace(state, revoked=True, version=state.version + 1)
    raise TypeError(f"API key cannot apply {event.type}")


API_KEY = Decider[ApiKeyState](
    aggregate_type="api_key",
    state_type=ApiKeyState,
    command_type=ApiKeyCommand,
    decide=decide,
    evolve=evolve,
)
