"""Ends what a job leaves behind once its retention is over (its status is a 404 by then): its
input, result and partial outputs (services/api/job_payloads.py) and its sent webhooks; and payloads
whose job was never submitted (the command failed after the payload was stored), after a day.
Runs in every api process; deletes are idempotent, so replicas sweeping together do no harm."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger("gpuworker.retention")

EVERY_S = 30.0
SWEEP_BATCH = 1000


async def sweep_forever(pool: AsyncConnectionPool[Any], every_s: float = EVERY_S) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            deleted = SWEEP_BATCH
            while deleted >= SWEEP_BATCH:  # a large backlog goes in batches, one at a time
                deleted = await sweep(pool, int(time.time() * 1000))
        except (psycopg.Error, PoolTimeout) as exc:
            log.debug("retention sweep: database unavailable (%s)", exc)
        except Exception:
            log.exception("retention sweep failed")


async def sweep(pool: AsyncConnectionPool[Any], now_ms: int) -> int:
    """Delete what belongs to jobs past their retention, and orphans; returns rows deleted."""
    deleted = 0
    async with pool.connection() as conn:
        for statement in (
            "DELETE FROM job_payloads WHERE (job_id, sha256) IN ("
            " SELECT p.job_id, p.sha256 FROM job_payloads p JOIN jobs j ON j.id = p.job_id"
            " WHERE j.expires_ms < %(now)s LIMIT %(batch)s)",
            "DELETE FROM job_stream WHERE (job_id, position) IN ("
            " SELECT s.job_id, s.position FROM job_stream s JOIN jobs j ON j.id = s.job_id"
            " WHERE j.expires_ms < %(now)s LIMIT %(batch)s)",
            "DELETE FROM webhook_deliveries WHERE (job_id, sequence) IN ("
            " SELECT d.job_id, d.sequence FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id"
            " WHERE j.expires_ms < %(now)s AND (d.delivered_at IS NOT NULL"
            " OR d.gave_up_at IS NOT NULL) LIMIT %(batch)s)",
            "DELETE FROM job_payloads WHERE (job_id, sha256) IN ("
            " SELECT p.job_id, p.sha256 FROM job_payloads p"
            " WHERE p.created_at < now() - interval '1 day'"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = p.job_id) LIMIT %(batch)s)",
        ):
            cur = await conn.execute(statement, {"now": now_ms, "batch": SWEEP_BATCH})
            deleted += cur.rowcount or 0
    return deleted
