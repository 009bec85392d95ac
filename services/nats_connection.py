"""One way to connect to NATS: reconnect forever, log one line per state change."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NatsClient

log = logging.getLogger("gpuworker.nats")


def nats_servers(url: str) -> list[str]:
    """`NATS_URL` may name a cluster: `nats://n1:4222,nats://n2:4222` becomes a list of servers."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


async def connect_nats(url: str, name: str) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("nats %s: disconnected", name)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)

    return await nats.connect(
        nats_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        # Nothing is buffered while disconnected: a command that cannot be sent now must fail now
        # (503), not be delivered minutes later behind the caller's back.
        pending_size=0,
    )
