"""`gpuworker audit`: keeps the append-only audit log (`projections.audit`) from every event.

Its own role, NATS user and checkpoint, so neither a halted read model nor the ledger holds the
audit trail back (nor the other way round). Replicas may run side by side: batches serialise on
the audit checkpoint's row."""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from projections.audit import AuditProjection
from projections.migrate import migrate
from projections.runner import ProjectionRunner
from services.config import Settings
from services.nats_connection import connect_role
from services.nats_permissions import AUDIT_USER
from services.roles.lifecycle import until_signalled, wait_for_stream

log = logging.getLogger("gpuworker.audit")


async def run_audit(settings: Settings) -> None:
    await migrate(settings.database_url)
    nc = await connect_role(settings, AUDIT_USER)
    await wait_for_stream(nc)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=2, open=False
    )
    await pool.open()
    runner = ProjectionRunner(nc, pool, [AuditProjection()])
    await runner.start()
    log.info("audit ready")
    try:
        await until_signalled()
    finally:
        await runner.stop()
        await nc.close()
        await pool.close()
