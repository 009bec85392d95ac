"""What an endpoint is doing now, read for its responses and its /health: jobs queued, running and
finished (from the jobs read model), and its workers (from the endpoint's own record of the workers
the platform runs, and their pings, `worker_liveness`).

A worker the platform placed is initializing until its container runs and it has pinged, then
running while it holds a job and idle otherwise, and gone once it stopped (whatever its last
pings said). A worker someone runs by hand (`gpuworker endpoints worker-env`) counts while it
pinged within the dispatcher's `lost_after` (GPUWORKER_WORKER_LOST_AFTER). An endpoint whose
workers keep failing (services/deciders/endpoint.py, `unhealthy`) counts one unhealthy worker with
that reason. Finished jobs are counted while their results are kept (their retention), as /status
would still show them."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from services.api.spending import costs_to_date
from services.deciders.endpoint import EndpointState


class Activity(msgspec.Struct, kw_only=True):
    in_queue: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    workers_running: int = 0
    workers_idle: int = 0
    workers_initializing: int = 0
    workers_unhealthy: int = 0
    unhealthy_reasons: list[str] = []
    cost_to_date_micros: int = 0


async def activity_of(
    pool: AsyncConnectionPool[Any], endpoints: list[EndpointState], lost_after_s: float
) -> dict[str, Activity]:
    ids = [e.id for e in endpoints]
    found: dict[str, Activity] = {i: Activity() for i in ids}
    if not ids:
        return found
    now_ms = int(time.time() * 1000)
    live: dict[str, set[str]] = defaultdict(set)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT endpoint_id, status, count(*), COALESCE(sum((doc->>'retries')::int), 0)"
            " FROM jobs WHERE endpoint_id = ANY(%b)"
            " AND (status IN ('IN_QUEUE', 'IN_PROGRESS') OR expires_ms > %s)"
            " GROUP BY endpoint_id, status",
            (ids, now_ms),
        )
        for endpoint_id, status, count, retried in await cur.fetchall():
            counts = found[endpoint_id]
            counts.retried += int(retried)
            field = {
                "IN_QUEUE": "in_queue",
                "IN_PROGRESS": "in_progress",
                "COMPLETED": "completed",
                "FAILED": "failed",
            }.get(status)
            if field is not None:
                setattr(counts, field, int(count))
        cur = await conn.execute(
            "SELECT l.endpoint_id, l.worker_id, l.unhealthy, EXISTS (SELECT 1 FROM jobs j"
            "  WHERE j.endpoint_id = l.endpoint_id AND j.status = 'IN_PROGRESS'"
            "  AND j.worker_id = l.worker_id)"
            " FROM worker_liveness l WHERE l.endpoint_id = ANY(%b)"
            " AND l.last_seen > now() - %s * interval '1 second'",
            (ids, lost_after_s),
        )
        by_id = {e.id: e for e in endpoints}
        for endpoint_id, worker_id, unhealthy, busy in await cur.fetchall():
            counts = found[endpoint_id]
            endpoint = by_id[endpoint_id]
            record = endpoint.live_workers.get(worker_id)
            if record is None and worker_id in endpoint.billed_workers:
                continue  # one of ours that stopped: its last pings are history
            if record is not None and record.status == "STARTING":
                continue  # pinging already, but its host has not reported it running yet
            live[endpoint_id].add(worker_id)
            if unhealthy:
                counts.workers_unhealthy += 1
                counts.unhealthy_reasons.append(f"worker {worker_id}: {unhealthy}")
            elif busy:
                counts.workers_running += 1
            else:
                counts.workers_idle += 1
    costs = await costs_to_date(
        pool, [w for e in endpoints for w in e.billed_workers], datetime.now(UTC)
    )
    for endpoint in endpoints:
        counts = found[endpoint.id]
        placed = set(endpoint.workers) | {
            w.id for w in endpoint.live_workers.values() if w.status != "STOPPING"
        }
        counts.workers_initializing = len(placed - live[endpoint.id])
        if (reason := endpoint.unhealthy) is not None:
            counts.workers_unhealthy += 1
            counts.unhealthy_reasons.append(reason)
        counts.cost_to_date_micros = sum(costs.get(w, 0) for w in endpoint.billed_workers)
    return found


async def record_ping(
    pool: AsyncConnectionPool[Any],
    endpoint_id: str,
    worker_id: str,
    version: int | None,
    running: list[str],
    unhealthy: str | None,
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO worker_liveness"
            " (endpoint_id, worker_id, last_seen, version, running, unhealthy)"
            " VALUES (%s, %s, now(), %s, %s, %s) ON CONFLICT (endpoint_id, worker_id) DO UPDATE"
            " SET last_seen = now(), version = EXCLUDED.version, running = EXCLUDED.running,"
            " unhealthy = EXCLUDED.unhealthy",
            (endpoint_id, worker_id, version, running, unhealthy),
        )
