"""GET /health: PostgreSQL, NATS/JetStream and each projection's progress, checked within a bound.

Projection progress comes from the projector itself (its checkpoint row: applied sequence, what
was pending behind it, when it last said so, and why it halted), so an operator sees a halted or
silent projector here rather than a lag that never moves."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get

from events.subjects import STREAM
from projections import checkpoints
from projections.catalog import PROJECTIONS
from services.api.context import ApiContext, context_of
from services.cli.supervisor import ProcessStatus, read_status
from services.errors import ErrorBody

CHECK_TIMEOUT_S = 2.0
# A projector reports at least every 5 s while it runs; silence past this means it is not running.
SILENT_AFTER_S = 30.0


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    detail: str | None = None


class ProjectionLag(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    last_sequence: int
    pending: int | None
    # Why the projection is not keeping up: an event it cannot apply, or a silent projector.
    problem: str | None = None


class HealthOut(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    status: str
    postgres: Check
    nats: Check
    projections: dict[str, ProjectionLag]
    # Under `gpuworker up`: each supervised process (roles, nats-server, PostgreSQL).
    processes: dict[str, ProcessStatus] | None = None
    error: ErrorBody | None = None


def _processes(ctx: ApiContext) -> dict[str, ProcessStatus] | None:
    if not ctx.settings.supervisor_status:
        return None
    status = read_status(Path(ctx.settings.supervisor_status))
    return status.processes if status else None


def _problem(status: checkpoints.Status, now: datetime) -> str | None:
    if status.halted:
        return f"halted: {status.halted}"
    if status.reported_at and (now - status.reported_at).total_seconds() > SILENT_AFTER_S:
        return f"its projector has been silent since {status.reported_at.isoformat()}"
    return None


async def _postgres(ctx: ApiContext) -> tuple[Check, dict[str, ProjectionLag]]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), ctx.pool.connection(CHECK_TIMEOUT_S) as conn:
            statuses = await checkpoints.statuses(conn)
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
    except Exception as exc:
        return Check(ok=False, detail=f"unreachable: {type(exc).__name__}"), {}
    assert row is not None
    return Check(ok=True), {
        name: ProjectionLag(
            last_sequence=status.last_sequence,
            pending=status.pending,
            problem=_problem(status, row[0]),
        )
        for name, status in statuses.items()
    }


async def _nats(ctx: ApiContext) -> Check:
    if not ctx.nc.is_connected:
        return Check(ok=False, detail="not connected")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await ctx.nc.jetstream(timeout=CHECK_TIMEOUT_S).stream_info(STREAM)
    except Exception as exc:
        return Check(ok=False, detail=f"JetStream unavailable: {type(exc).__name__}")
    return Check(ok=True)


@get("/health", tags=["health"], summary="Dependency and projection health")
async def health(request: Request[Any, Any, Any]) -> Response[HealthOut]:
    ctx = context_of(request)
    (postgres, recorded), nats_check = await asyncio.gather(_postgres(ctx), _nats(ctx))
    # Every read model, and every other reader with a checkpoint (the ledger, the audit log).
    lags = {
        name: recorded.get(name)
        or ProjectionLag(last_sequence=ctx.watcher.seen(name), pending=None)
        for name in [*PROJECTIONS, *sorted(set(recorded) - set(PROJECTIONS))]
    }
    down = [name for name, c in (("postgres", postgres), ("nats", nats_check)) if not c.ok]
    processes = _processes(ctx)
    degraded = any(lag.problem for lag in lags.values()) or any(
        p.state != "running" for p in (processes or {}).values()
    )
    body = HealthOut(
        status="unavailable" if down else "degraded" if degraded else "ok",
        postgres=postgres,
        nats=nats_check,
        projections=lags,
        processes=processes,
        error=ErrorBody(503, "service_unavailable", f"{' and '.join(down)} unavailable")
        if down
        else None,
    )
    return Response(body, status_code=503 if down else 200, media_type=MediaType.JSON)
