"""`gpuworker deciders`: answers commands; seeds the built-in templates."""

from __future__ import annotations

import logging

import msgspec

from events.ids import new_id
from events.store import JetStreamEventStore
from services.command_wire import CommandEnvelope
from services.config import Settings
from services.deciders.builtin_templates import builtin_templates
from services.deciders.catalog import DECIDERS
from services.deciders.runner import DeciderRunner
from services.deciders.server import DeciderServer
from services.nats_connection import connect_nats
from services.roles.lifecycle import ensure_stream, until_signalled

log = logging.getLogger("gpuworker.deciders")


async def seed_builtins(runner: DeciderRunner) -> None:
    for template_id, command in builtin_templates().items():
        reply = await runner.handle(
            "template",
            CommandEnvelope(
                id=new_id(),
                aggregate_id=template_id,
                correlation_id="seed",
                command=msgspec.Raw(msgspec.json.encode(command)),
            ),
        )
        if reply.error is not None and reply.error.code != 409:
            log.warning("could not seed template %s: %s", template_id, reply.error.message)


async def run_deciders(settings: Settings) -> None:
    nc = await connect_nats(settings.nats_url, "deciders")
    await ensure_stream(nc, settings.stream_replicas)
    runner = DeciderRunner(JetStreamEventStore(nc), DECIDERS)
    server = DeciderServer(nc, runner)
    await server.start()
    await seed_builtins(runner)
    log.info("deciders ready")
    try:
        await until_signalled()
    finally:
        await server.stop()
        await nc.drain()
