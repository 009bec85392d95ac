"""`gpuworker projector`: applies migrations, then keeps every projection up to date."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.runner import Projection, ProjectionRunner
from services.config import Settings
from services.nats_connection import connect_role
from services.nats_permissions import PROJECTOR_USER
from services.roles.lifecycle import until_signalled, wait_for_stream

log = logging.getLogger("gpuworker.projector")


async def run_projections(settings: Settings, user: str, projections: Sequence[Projection]) -> None:
    """Logged in to NATS as `user`, apply `projections` until signalled (the projector's and the
    audit role's whole life)."""
    await migrate(settings.database_url)
    nc = await connect_role(settings, user)
    await wait_for_stream(nc)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=len(projections) + 1, open=False
    )
    await pool.open()
    runner = ProjectionRunner(nc, pool, projections)
    await runner.start()
    log.info("%s ready: %s", user, ", ".join(p.name for p in projections))
    try:
        await until_signalled()
    finally:
        await runner.stop()
        await nc.close()
        await pool.close()


async def run_projector(settings: Settings) -> None:
    await run_projections(settings, PROJECTOR_USER, list(PROJECTIONS.values()))
