"""GET /health: PostgreSQL, NATS/JetStream and projection lag, each checked within a bound."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get

from events.subjects import STREAM
from projections.catalog import PROJECTIONS
from projections.runner import durable_name
from services.api.context import ApiContext, context_of
from services.errors import ErrorBody

CHECK_TIMEOUT_S = 2.0


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    detail: str | None = None


class ProjectionLag(msgspec.Struct, rename="camel", kw_only=True):
    last_sequence: int
    pending: int | None


class HealthOut(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    status: str
    postgres: Check
    nats: Check
    projections: dict[str, ProjectionLag]
    error: ErrorBody | None = None


async def _postgres(ctx: ApiContext) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), ctx.pool.connection(CHECK_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")
        return Check(ok=True)
    except Exception as exc:
        return Check(ok=False, detail=f"unreachable: {type(exc).__name__}")


async def _pending(ctx: ApiContext) -> tuple[Check, dict[str, int | None]]:
    pending: dict[str, int | None] = {name: None for name in PROJECTIONS}
    if not ctx.nc.is_connected:
        return Check(ok=False, detail="not connected"), pending
    js = ctx.nc.jetstream(timeout=CHECK_TIMEOUT_S)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await js.stream_info(STREAM)
            for name, projection in PROJECTIONS.items():
                info = await js.consumer_info(STREAM, durable_name(projection))
                pending[name] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    except Exception as exc:
        return Check(ok=False, detail=f"JetStream unavailable: {type(exc).__name__}"), pending
    return Check(ok=True), pending


@get("/health", tags=["health"], summary="Dependency and projection health")
async def health(request: Request[Any, Any, Any]) -> Response[HealthOut]:
    ctx = context_of(request)
    postgres, (nats_check, pending) = await asyncio.gather(_postgres(ctx), _pending(ctx))
    lags = {
        name: ProjectionLag(last_sequence=ctx.watcher.seen(name), pending=pending[name])
        for name in PROJECTIONS
    }
    down = [name for name, c in (("postgres", postgres), ("nats", nats_check)) if not c.ok]
    body = HealthOut(
        status="unavailable" if down else "ok",
        postgres=postgres,
        nats=nats_check,
        projections=lags,
        error=ErrorBody(503, "service_unavailable", f"{' and '.join(down)} unavailable")
        if down
        else None,
    )
    return Response(body, status_code=503 if down else 200, media_type=MediaType.JSON)
