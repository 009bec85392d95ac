"""Operator commands that talk to the servers directly: projection rebuilds, blog publishing."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from events.subjects import operator_command_subject
from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.rebuild import rebuild
from services.api.command_bus import CommandBus
from services.config import Settings
from services.deciders.blog import PublishPost
from services.deciders.entitlements import OPERATOR_ACTOR
from services.errors import GpuWorkerError
from services.nats_connection import connect_role
from services.nats_permissions import OPERATOR_USER


async def rebuild_projections(settings: Settings, name: str | None) -> int:
    if name is not None and name not in PROJECTIONS:
        print(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}", file=sys.stderr)
        return 2
    await migrate(settings.database_url)
    nc = await connect_role(settings, OPERATOR_USER, "cli")
    try:
        for projection in [PROJECTIONS[name]] if name else PROJECTIONS.values():
            rows, seconds = await rebuild(settings.database_url, nc, projection)
            print(f"rebuilt {projection.name}: {rows} rows in {seconds:.2f}s")
    finally:
        await nc.close()
    return 0


async def publish_post(settings: Settings, slug: str, title: str, summary: str, body: str) -> int:
    nc = await connect_role(settings, OPERATOR_USER, "cli")
    try:
        reply = await CommandBus(nc, settings.request_timeout_s).send_on(
            operator_command_subject("blog_post"),
            slug,
            PublishPost(
                actor=OPERATOR_ACTOR, at=datetime.now(UTC), title=title, summary=summary, body=body
            ),
            correlation_id=f"cli:blog:{slug}",
        )
    except GpuWorkerError as exc:
        print(f"gpuworker: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    print(f"published {slug} (stream sequence {reply.sequence})")
    return 0
