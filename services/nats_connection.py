"""One way to connect to NATS: log in as the role's own user, reconnect forever, log one line per
state change."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NatsClient

from services.config import ConfigurationError, Settings
from services.nats_credentials import load
from services.nats_permissions import inbox_prefix

log = logging.getLogger("gpuworker.nats")


@dataclass(frozen=True)
class NatsLogin:
    user: str
    password: str


def nats_servers(url: str) -> list[str]:
    """`NATS_URL` may name a cluster: `nats://n1:4222,nats://n2:4222` becomes a list of servers."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


def login_for(settings: Settings, user: str) -> NatsLogin | None:
    """The process's NATS login: GPUWORKER_NATS_USER/PASSWORD if set, else `user`'s entry in
    the GPUWORKER_NATS_CREDENTIALS file, else none (NATS_URL may still carry one)."""
    if settings.nats_user or settings.nats_password:
        if not (settings.nats_user and settings.nats_password):
            raise ConfigurationError("set both GPUWORKER_NATS_USER and GPUWORKER_NATS_PASSWORD")
        return NatsLogin(settings.nats_user, settings.nats_password)
    if settings.nats_credentials:
        path = Path(settings.nats_credentials)
        try:
            password = load(path).password_of(user)
        except OSError as exc:
            raise ConfigurationError(f"cannot read GPUWORKER_NATS_CREDENTIALS: {exc}") from None
        if password is None:
            hint = (
                f"; run `gpuworker nats add-agent {user.removeprefix('agent-')}`"
                if user.startswith("agent-")
                else ""
            )
            raise ConfigurationError(f"{path} has no NATS user {user!r}{hint}")
        return NatsLogin(user, password)
    return None


async def connect_role(settings: Settings, user: str, name: str | None = None) -> NatsClient:
    """Connect as `user` (a role, or an agent's `agent-<host>`), however the login is given."""
    return await connect_nats(settings.nats_url, name or user, login_for(settings, user))


async def connect_nats(url: str, name: str, login: NatsLogin | None = None) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("nats %s: disconnected", name)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)

    servers = nats_servers(url)
    # Replies come to an inbox only this user may subscribe to (see nats_permissions).
    user = login.user if login else urlsplit(servers[0]).username
    return await nats.connect(
        servers,
        name=name,
        user=login.user if login else None,
        password=login.password if login else None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        # Nothing is buffered while disconnected: a command that cannot be sent now must fail now
        # (503), not be delivered minutes later behind the caller's back.
        pending_size=0,
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
    )
