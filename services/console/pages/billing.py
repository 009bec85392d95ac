"""Billing: the summaries of instances, serverless and volumes as a chart and a table (by GPU type
or by resource; by hour, day, week or month), the postings as a CSV or JSON Lines download, and
the audit trail.

The page's query string is the summary route's own (`bucketSize`, `grouping`, `startTime`,
`endTime`), handed to it unchanged: a bad value is refused there, in its words."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from services.api.audit import AuditRecordOut
from services.api.billing import InstanceRecord, ServerlessRecord, VolumeRecord
from services.console.charts import by_bucket, chart
from services.console.render import page
from services.console.rest import rest_of
from services.errors import GpuWorkerError, NotFound

HERE = "/console/billing"
RESOURCES: dict[str, tuple[str, type[Any], list[tuple[str, str]]]] = {
    "instances": (
        "/billing/instances",
        InstanceRecord,
        [("gpuTypeId", "GPU type"), ("instanceId", "Instance")],
    ),
    "serverless": (
        "/billing/serverless",
        ServerlessRecord,
        [("endpointId", "Endpoint"), ("gpuTypeId", "GPU type")],
    ),
    "volumes": ("/billing/volumes", VolumeRecord, [("volumeId", "Volume")]),
}
BUCKETS = [("hour", "Hour"), ("day", "Day"), ("week", "Week"), ("month", "Month")]
LABELS = {"hour": "%b %d %H:00", "day": "%b %d", "week": "%b %d", "month": "%Y-%m"}
AUDIT_ROWS = 20


@get(HERE, name="console:billing")
async def billing_home() -> Redirect:
    return Redirect(HERE + "/instances", status_code=303)


@get(HERE + "/export", name="console:billing-export")
async def billing_export(request: Request[Any, Any, Any]) -> Response[Any]:
    """`GET /billing/export` itself: `format`, `startTime`, `endTime` as it takes them."""
    query = request.query_params
    stream: Response[Any] = await rest_of(request).handler_result(
        "GET",
        "/billing/export",
        request,
        export_format=query.get("format"),
        start_time=query.get("startTime"),
        end_time=query.get("endTime"),
    )
    return stream


async def _audit(request: Request[Any, Any, Any], cursor: str | None) -> list[AuditRecordOut]:
    return await rest_of(request).listed(
        "/audit", request, AuditRecordOut, limit=AUDIT_ROWS, cursor=cursor
    )


@get(HERE + "/{resource:str}", name="console:billing-summary")
async def billing_page(request: Request[Any, Any, Any], resource: FromPath[str]) -> Template:
    if resource not in RESOURCES:
        raise NotFound(f"no billing summary for {resource!r}; there are {', '.join(RESOURCES)}")
    path, record, groupings = RESOURCES[resource]
    query = request.query_params
    bucket = query.get("bucketSize") or "day"
    grouping = query.get("grouping") or groupings[0][0]
    error: str | None = None
    records: list[Any] = []
    status_code = 200
    try:
        records = await rest_of(request).call(
            "GET",
            path,
            request,
            list[record],  # type: ignore[valid-type]
            start_time=query.get("startTime"),
            end_time=query.get("endTime"),
            bucket_size=query.get("bucketSize"),
            grouping=query.get("grouping"),
        )
    except GpuWorkerError as exc:
        error, status_code = exc.message, exc.code
    key = {"gpuTypeId": "gpu_type_id", "instanceId": "instance_id"}.get(grouping)
    key = key or {"endpointId": "endpoint_id", "volumeId": "volume_id"}.get(grouping, "")
    bars = by_bucket(((r.time, r.amount_micros) for r in records), LABELS.get(bucket, "%b %d"))
    return page(
        request,
        "billing.html",
        status_code,
        resource=resource,
        resources=list(RESOURCES),
        groupings=groupings,
        buckets=BUCKETS,
        bucket=bucket,
        grouping=grouping,
        start=query.get("startTime") or "",
        end=query.get("endTime") or "",
        records=records,
        key=key,
        spend=chart(f"Spend per {bucket}", bars),
        audit=await _audit(request, None),
        error=error,
    )


@get("/console/audit", name="console:audit")
async def audit_page(
    request: Request[Any, Any, Any], cursor: FromQuery[str | None] = None
) -> Template:
    """The whole trail, newest first, a page at a time."""
    rows, more = await rest_of(request).listed_page(
        "/audit", request, AuditRecordOut, limit=AUDIT_ROWS, cursor=cursor
    )
    return page(request, "audit.html", audit=rows, more=more)
