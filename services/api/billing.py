"""/billing/instances, /billing/serverless, /billing/volumes and /billing/export: what the
signed-in customer's resources cost, shaped like RunPod's billing API, and their own postings.

Query parameters (all optional): `startTime`, `endTime` (exclusive; ISO 8601, default the last 30
days up to now; snapped outwards to whole buckets), `bucketSize` (`hour|day|week|month`, default
`day`, UTC), `grouping`, and a filter by resource (`instanceId`, `endpointId`, `volumeId`) or GPU
type (`gpuTypeId`). Records:

- `time`: the bucket's start; `amount` (USD) and `amountMicros` (exact);
- `timeBilledMs`: GPU time billed (wall time of the GPU sessions, not multiplied by their GPUs);
- `diskSpaceBilledGb`: storage as the average GB billed over the bucket (GB-seconds divided by
  the bucket's seconds: a 100 GB volume kept for the whole bucket reads 100);
- the group's key (`instanceId`, `gpuTypeId`, `endpointId` or `volumeId`);
- `posted`: false when the record holds usage of a running session since its last accrual, which
  is counted to now but not yet posted; `unpostedAmountMicros` says how much.

Only the caller's own ledger is read: another customer's resource id filters to nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, get
from litestar.params import QueryParameter
from litestar.response import Stream

from events.subjects import ID_PATTERN
from ledger.export import MEDIA_TYPES, ExportRange, stream_text
from ledger.money import MICROS_PER_USD
from ledger.summaries import (
    BUCKET_SIZES,
    SummaryError,
    SummaryQuery,
    SummaryRow,
    next_bucket,
    parse_time,
    query_of,
    summarise,
    window,
)
from services.api.context import context_of
from services.errors import BadRequest

_MAX_PARAMETER = 256


def _query(name: str, pattern: str | None = None) -> Any:
    return QueryParameter(name=name, max_length=_MAX_PARAMETER, pattern=pattern)


# What reaches PostgreSQL as a filter must be text it can hold (never a NUL byte): an id, or a GPU
# type id (printable ASCII, "NVIDIA GeForce RTX 4090").
def _id_query(name: str) -> Any:
    return _query(name, ID_PATTERN)


StartTime = Annotated[str | None, _query("startTime")]
EndTime = Annotated[str | None, _query("endTime")]
BucketSizeParameter = Annotated[str | None, _query("bucketSize")]
GroupingParameter = Annotated[str | None, _query("grouping")]
GpuTypeParameter = Annotated[str | None, _query("gpuTypeId", r"^[ -~]+$")]


class InstanceRecord(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    time: datetime
    amount: float
    amount_micros: int
    time_billed_ms: int
    disk_space_billed_gb: float
    posted: bool
    unposted_amount_micros: int
    instance_id: str | msgspec.UnsetType | None = msgspec.UNSET
    gpu_type_id: str | msgspec.UnsetType | None = msgspec.UNSET


class ServerlessRecord(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    time: datetime
    amount: float
    amount_micros: int
    time_billed_ms: int
    posted: bool
    unposted_amount_micros: int
    endpoint_id: str | msgspec.UnsetType | None = msgspec.UNSET
    gpu_type_id: str | msgspec.UnsetType | None = msgspec.UNSET


class VolumeRecord(msgspec.Struct, rename="camel", kw_only=True):
    time: datetime
    amount: float
    amount_micros: int
    disk_space_billed_gb: float
    posted: bool
    unposted_amount_micros: int
    volume_id: str | None


def _time(parameter: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(parameter, value)
    except SummaryError as exc:
        raise BadRequest(str(exc)) from None


def _refuse_unknown(request: Request[Any, Any, Any], known: set[str]) -> None:
    """A parameter of another API (RunPod's `podId`) silently ignored would widen the answer."""
    for name in request.query_params:
        if name not in known:
            raise BadRequest(
                f"query parameter `{name}` is not known here; known: {', '.join(sorted(known))}"
            )


async def _rows(
    request: Request[Any, Any, Any],
    kind: str,
    start_time: str | None,
    end_time: str | None,
    bucket_size: str | None,
    grouping: str | None,
    resource_id: str | None,
    gpu_type_id: str | None,
    known: set[str],
) -> tuple[SummaryQuery, list[SummaryRow]]:
    _refuse_unknown(request, known | {"startTime", "endTime", "bucketSize", "grouping"})
    bucket = bucket_size or "day"
    if bucket not in BUCKET_SIZES:
        raise BadRequest(
            f"query parameter `bucketSize`: {bucket!r} is not one of {', '.join(BUCKET_SIZES)}"
        )
    now = datetime.now(UTC)
    try:
        span = window(
            _time("startTime", start_time),
            _time("endTime", end_time),
            bucket,
            now,
        )
        query = query_of(kind, span, grouping, resource_id, gpu_type_id)
    except SummaryError as exc:
        raise BadRequest(str(exc)) from None
    async with context_of(request).pool.connection() as conn:
        try:
            rows = await summarise(conn, request.user.id, query, now)
        except SummaryError as exc:
            raise BadRequest(str(exc)) from None
    return query, rows


# The record field that holds each grouping's key.
_KEY_FIELDS = {
    "instanceId": "instance_id",
    "gpuTypeId": "gpu_type_id",
    "endpointId": "endpoint_id",
    "volumeId": "volume_id",
}
Record = TypeVar("Record", InstanceRecord, ServerlessRecord, VolumeRecord)


def _records(kind: type[Record], query: SummaryQuery, rows: list[SummaryRow]) -> list[Record]:
    fields = set(kind.__struct_fields__)
    records = []
    for row in rows:
        values: dict[str, Any] = {
            "time": row.time,
            "amount": row.amount_micros / MICROS_PER_USD,
            "amount_micros": row.amount_micros,
            "posted": not row.pending,
            "unposted_amount_micros": row.unposted_micros,
            _KEY_FIELDS[query.grouping]: row.key,
        }
        if "time_billed_ms" in fields:
            values["time_billed_ms"] = row.gpu_seconds * 1000
        if "disk_space_billed_gb" in fields:
            values["disk_space_billed_gb"] = _gb(row, query)
        records.append(kind(**values))
    return records


def _gb(row: SummaryRow, query: SummaryQuery) -> float:
    seconds = (next_bucket(row.time, query.window.bucket) - row.time).total_seconds()
    return round(row.gb_seconds / seconds, 6)


@get(
    "/billing/instances",
    tags=["billing"],
    summary="GPU instance billing summary",
    description="Groupings: gpuTypeId (default) or instanceId; filters: instanceId, gpuTypeId."
    " GPU time and instance disks (container disk, volume disk) both count.",
)
async def instance_billing(
    request: Request[Any, Any, Any],
    start_time: StartTime = None,
    end_time: EndTime = None,
    bucket_size: BucketSizeParameter = None,
    grouping: GroupingParameter = None,
    instance_id: Annotated[str | None, _id_query("instanceId")] = None,
    gpu_type_id: GpuTypeParameter = None,
) -> list[InstanceRecord]:
    query, rows = await _rows(
        request,
        "instances",
        start_time,
        end_time,
        bucket_size,
        grouping,
        instance_id,
        gpu_type_id,
        {"instanceId", "gpuTypeId"},
    )
    return _records(InstanceRecord, query, rows)


@get(
    "/billing/serverless",
    tags=["billing"],
    summary="Serverless endpoint billing summary",
    description="Groupings: endpointId (default) or gpuTypeId; filters: endpointId, gpuTypeId.",
)
async def serverless_billing(
    request: Request[Any, Any, Any],
    start_time: StartTime = None,
    end_time: EndTime = None,
    bucket_size: BucketSizeParameter = None,
    grouping: GroupingParameter = None,
    endpoint_id: Annotated[str | None, _id_query("endpointId")] = None,
    gpu_type_id: GpuTypeParameter = None,
) -> list[ServerlessRecord]:
    query, rows = await _rows(
        request,
        "serverless",
        start_time,
        end_time,
        bucket_size,
        grouping,
        endpoint_id,
        gpu_type_id,
        {"endpointId", "gpuTypeId"},
    )
    return _records(ServerlessRecord, query, rows)


@get(
    "/billing/volumes",
    tags=["billing"],
    summary="Network volume billing summary",
    description="Grouped by volumeId; filter: volumeId.",
)
async def volume_billing(
    request: Request[Any, Any, Any],
    start_time: StartTime = None,
    end_time: EndTime = None,
    bucket_size: BucketSizeParameter = None,
    grouping: GroupingParameter = None,
    volume_id: Annotated[str | None, _id_query("volumeId")] = None,
) -> list[VolumeRecord]:
    query, rows = await _rows(
        request,
        "volumes",
        start_time,
        end_time,
        bucket_size,
        grouping,
        volume_id,
        None,
        {"volumeId"},
    )
    return _records(VolumeRecord, query, rows)


@get(
    "/billing/export",
    tags=["billing"],
    summary="Your postings as CSV or JSON Lines",
    description="`format`: csv (default) or jsonl; `startTime`, `endTime` (exclusive, ISO 8601;"
    " default: everything up to now). Every posting of yours: charges, reversals and credits.",
)
async def billing_export(
    request: Request[Any, Any, Any],
    export_format: Annotated[str | None, _query("format")] = None,
    start_time: StartTime = None,
    end_time: EndTime = None,
) -> Stream:
    _refuse_unknown(request, {"format", "startTime", "endTime"})
    fmt = export_format or "csv"
    if fmt not in MEDIA_TYPES:
        raise BadRequest(f"query parameter `format`: {fmt!r} is not one of csv, jsonl")
    start, end = _time("startTime", start_time), _time("endTime", end_time)
    if start is not None and end is not None and end <= start:
        raise BadRequest(f"query parameter `endTime`: must be after startTime ({start})")
    export = ExportRange(start=start, end=end, user_id=request.user.id)
    pool = context_of(request).pool
    text_format: Literal["csv", "jsonl"] = "jsonl" if fmt == "jsonl" else "csv"

    async def chunks() -> AsyncIterator[bytes]:
        async with pool.connection() as conn:
            async for chunk in stream_text(conn, text_format, export):
                yield chunk

    return Stream(
        chunks(),
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="gpuworker-postings.{fmt}"'},
    )
