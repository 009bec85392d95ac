"""The NATS users of one deployment and their passwords, in a JSON file only its owner can read.

`gpuworker up` keeps one in its data folder and renders its embedded nats-server's
`authorization` from it; a role pointed at it (`GPUWORKER_NATS_CREDENTIALS`) logs in with its own
entry, so one file serves every role on a machine while each still holds only its own rights.
Passwords are random (256 bits), made once and reused across restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from services.nats_permissions import (
    ROLE_USERS,
    NatsUser,
    agent_permissions,
    agent_user,
    role_permissions,
)


class AgentEntry(msgspec.Struct, frozen=True, kw_only=True):
    password: str
    fleet: bool = False


class NatsCredentials(msgspec.Struct, frozen=True, kw_only=True):
    roles: dict[str, str]
    # By host id: each host's agent has a user of its own.
    agents: dict[str, AgentEntry] = {}

    def password_of(self, user: str) -> str | None:
        if user in self.roles:
            return self.roles[user]
        for host_id, entry in self.agents.items():
            if agent_user(host_id) == user:
                return entry.password
        return None

    def users(self) -> list[NatsUser]:
        users = [NatsUser(u, p, role_permissions(u)) for u, p in sorted(self.roles.items())]
        users += [
            NatsUser(agent_user(h), e.password, agent_permissions(h, e.fleet))
            for h, e in sorted(self.agents.items())
        ]
        return users

    def with_agent(self, host_id: str, fleet: bool = False) -> NatsCredentials:
        """This file plus an agent for `host_id` (kept as it is if it has one)."""
        agent_user(host_id)  # refuses an id that cannot be a subject token
        current = self.agents.get(host_id)
        if current is not None and current.fleet == fleet:
            return self
        password = current.password if current else new_password()
        agents = {**self.agents, host_id: AgentEntry(password=password, fleet=fleet)}
        return msgspec.structs.replace(self, agents=agents)


def new_password() -> str:
    """256 random bits, as a NATS password that also survives being an environment variable in a
    nats-server config (compose's `password: $VAR`): the server parses such a value like a config
    token, so one starting with `-` or made of digits only is refused (a urlsafe token starts with
    `-` one time in 64). A letter, then hex digits, is always read as a string."""
    return "n" + secrets.token_hex(32)


def new_credentials() -> NatsCredentials:
    return NatsCredentials(roles={user: new_password() for user in ROLE_USERS})


def load(path: Path) -> NatsCredentials:
    return msgspec.json.decode(path.read_bytes(), type=NatsCredentials)


def save(path: Path, credentials: NatsCredentials) -> None:
    """Replace the file at once, created 0600 (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(credentials)))
    os.replace(temporary, path)


def load_or_create(path: Path) -> NatsCredentials:
    """The file's credentials; a role added since the file was written gets its password now."""
    if path.exists():
        credentials = load(path)
        missing = [user for user in ROLE_USERS if user not in credentials.roles]
        if not missing:
            return credentials
        credentials = msgspec.structs.replace(
            credentials,
            roles={**credentials.roles, **{user: new_password() for user in missing}},
        )
    else:
        credentials = new_credentials()
    save(path, credentials)
    return credentials
