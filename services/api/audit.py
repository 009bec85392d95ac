"""GET /audit: the caller's own audit trail, from the audit log (`projections.audit`).

A customer sees what they did (the actor is them) and whatever happened to their resources (the
owner is them: an agent's report about their instance, a billing stop), never another customer's
events. Newest first by the time it happened; paged by keyset on (time, stream sequence) like the
other lists, so rows recorded meanwhile never shift a page. The log is written by its own role: an
action shows here within moments, not necessarily by the time its own request has answered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.params import QueryParameter
from psycopg import sql

from events.catalog import specs
from services.api import read_models
from services.api.context import context_of
from services.api.pagination import Page
from services.errors import BadRequest

_COLUMNS = sql.SQL(
    "occurred_at, sequence, event_id, actor, action, resource_type, resource_id,"
    " correlation_id, source_address"
)


class AuditRecordOut(msgspec.Struct, rename="camel", kw_only=True):
    # The event's id: the same in the event stream (AsyncAPI: /docs/asyncapi.json).
    id: str
    # When it happened, by the clock of whatever saw it (the api, a host's agent).
    time: datetime
    # A user id, or `system:<role>` (`system:agent:<host>` for a host's reports).
    actor: str
    # The event type, e.g. InstanceCreated.
    action: str
    resource_type: str
    resource_id: str
    correlation_id: str
    # The client's address, for actions requested through the api.
    source_address: str | None


class AuditPosition(msgspec.Struct, array_like=True, frozen=True):
    """A record's place in the trail: newest first by (time, stream sequence)."""

    time: datetime
    sequence: int


def _aware(value: datetime) -> datetime:
    """A time without a zone is UTC, as every time the api answers with is."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return _aware(datetime.fromisoformat(value))
    except ValueError:
        raise BadRequest(
            f"query parameter `{name}`: not an ISO 8601 time (e.g. 2026-11-30T10:00:00Z)"
        ) from None


def _checked(resource_type: str | None, resource_id: str | None) -> None:
    types = sorted({spec.aggregate for spec in specs().values()})
    if resource_type is not None and resource_type not in types:
        raise BadRequest(f"query parameter `resourceType`: one of {', '.join(types)}")
    if resource_id is not None and not read_models.valid_id(resource_id):
        raise BadRequest("query parameter `resourceId`: not a resource id")


@get(
    "/audit",
    tags=["audit"],
    summary="Your audit trail: what you did and what happened to your resources (paged)",
)
async def audit_trail(
    request: Request[Any, Any, Any],
    page: Page,
    # Strings checked here rather than by Litestar, so that errors name the parameters as sent.
    resource_type: Annotated[
        str | None, QueryParameter(name="resourceType", description="instance, volume, …")
    ] = None,
    resource_id: Annotated[str | None, QueryParameter(name="resourceId")] = None,
    start_time: Annotated[
        str | None,
        QueryParameter(name="startTime", description="From this time (inclusive), ISO 8601"),
    ] = None,
    end_time: Annotated[
        str | None,
        QueryParameter(name="endTime", description="Until this time (exclusive), ISO 8601"),
    ] = None,
) -> Response[list[AuditRecordOut]]:
    _checked(resource_type, resource_id)
    start, end = _time("startTime", start_time), _time("endTime", end_time)
    if start is not None and end is not None and end <= start:
        raise BadRequest("query parameter `endTime`: must be after `startTime`")
    after = page.after_key(AuditPosition)
    params: dict[str, Any] = {
        "user": request.user.id,
        "type": resource_type,
        "id": resource_id,
        "start": start,
        "end": end,
        "limit": page.limit + 1,
    }
    filters = [sql.SQL("TRUE")]
    if resource_type is not None:
        filters.append(sql.SQL("resource_type = %(type)s"))
    if resource_id is not None:
        filters.append(sql.SQL("resource_id = %(id)s"))
    if start is not None:
        filters.append(sql.SQL("occurred_at >= %(start)s"))
    if end is not None:
        filters.append(sql.SQL("occurred_at < %(end)s"))
    if after is not None:
        filters.append(sql.SQL("(occurred_at, sequence) < (%(at)s, %(seq)s)"))
        params |= {"at": _aware(after.time), "seq": after.sequence}
    where = sql.SQL(" AND ").join(filters)
    # Each half walks its own index in order; together they are the caller's trail.
    query = sql.SQL(
        "SELECT * FROM ("
        "(SELECT {cols} FROM audit_log WHERE owner_id = %(user)s AND {where}"
        " ORDER BY occurred_at DESC, sequence DESC LIMIT %(limit)s)"
        " UNION "
        "(SELECT {cols} FROM audit_log WHERE actor = %(user)s AND {where}"
        " ORDER BY occurred_at DESC, sequence DESC LIMIT %(limit)s)"
        ") AS trail ORDER BY occurred_at DESC, sequence DESC LIMIT %(limit)s"
    ).format(cols=_COLUMNS, where=where)
    async with context_of(request).pool.connection() as conn:
        cur = await conn.execute(query, params)
        rows = await cur.fetchall()
    keys = [AuditPosition(time=r[0], sequence=r[1]) for r in rows]
    records = [
        AuditRecordOut(
            id=r[2],
            time=r[0],
            actor=r[3],
            action=r[4],
            resource_type=r[5],
            resource_id=r[6],
            correlation_id=r[7],
            source_address=r[8],
        )
        for r in rows
    ]
    return page.response(request, page.of_keys(keys, records))
