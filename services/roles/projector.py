"""`gpuworker projector`: applies migrations, then keeps every projection up to date."""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from projections.migrate import migrate
from projections.runner import ProjectionRunner
from services.config import Settings
from services.nats_connection import connect_role
from services.nats_permissions import PROJECTOR_USER
from services.roles.lifecycle import until_signalled, wait_for_stream

log = logging.getLogger("gpuworker.projector")


async def run_projector(settings: Settings) -> None:
    await migrate(settings.database_url)
    nc = await connect_role(settings, PROJECTOR_USER)
    await wait_for_stream(nc)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=len(PROJECTIONS) + 1, open=False
    )
    await pool.open()
    runner = ProjectionRunner(nc, pool, list(PROJECTIONS.values()))
    await runner.start()
    log.info("projector ready: %s", ", ".join(PROJECTIONS))
    try:
        await until_signalled()
    finally:
        await runner.stop()
        await nc.close()
        await pool.close()
