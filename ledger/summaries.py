"""Billing summaries: what a customer's instances, serverless endpoints or volumes cost, bucket by
bucket (hour, day, week or month, in UTC), grouped by resource or GPU type.

Read from the ledger's rollups only (`ledger_hourly` for hours, `ledger_daily` for longer
buckets), so a summary costs what the rollup holds, not what was posted. A charge counts in the
bucket in which the period it covers ends (the posting's `at`). Open sessions also owe what they
ran since their last accrual: that part is added to the bucket that holds `now`, the bucket its
next accrual will post into, and reported apart (`unposted_micros`) since no posting has it yet.

The window is snapped outwards to whole buckets (a start down to its bucket's start, an end up to
the next boundary), as the rollups have no finer grain than an hour."""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql

from ledger.book import Progress, unposted, unposted_seconds
from ledger.store import STORAGE_METERS

BucketSize = Literal["hour", "day", "week", "month"]
BUCKET_SIZES: tuple[BucketSize, ...] = ("hour", "day", "week", "month")
# A summary is a list bounded by its window: at most this many buckets.
MAX_BUCKETS = 10_000
# Meters whose seconds are GPU time (timeBilledMs).
GPU_METERS = frozenset({"instance.gpu", "serverless.worker"})

_progress = msgspec.json.Decoder(Progress)


class SummaryError(ValueError):
    """A query parameter that cannot be used; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"query parameter `{parameter}`: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Grouping:
    """One way to group a summary: what the key is, and where it is read from."""

    # How a posted rollup row `r` (joined with what the ledger tracks of its resource, `t`) yields
    # the key; and the same from an open session.
    key: sql.Composable
    needs_tracked: bool


@dataclass(frozen=True)
class Kind:
    """One of the three summaries: which products it adds up and how it may be grouped."""

    products: tuple[str, ...]
    # ledger_tracked.resource_type of its resources
    tracked_type: str
    groupings: Mapping[str, Grouping]
    default_grouping: str
    # The query parameter that filters by resource, and the grouping that key is.
    resource_filter: str


_RESOURCE = Grouping(sql.SQL("r.resource_id"), needs_tracked=False)
# An instance's disks have no GPU type of their own: they count under their instance's.
_INSTANCE_GPU = Grouping(
    sql.SQL("COALESCE(NULLIF(r.gpu_type_id, ''), t.doc->>'gpu_type_id')"), needs_tracked=True
)
_GPU = Grouping(sql.SQL("NULLIF(r.gpu_type_id, '')"), needs_tracked=False)
_ENDPOINT = Grouping(sql.SQL("t.doc->>'endpoint_id'"), needs_tracked=True)

KINDS: dict[str, Kind] = {
    "instances": Kind(
        products=("instances.gpu", "instances.storage"),
        tracked_type="instance",
        groupings={"instanceId": _RESOURCE, "gpuTypeId": _INSTANCE_GPU},
        default_grouping="gpuTypeId",
        resource_filter="instanceId",
    ),
    "serverless": Kind(
        products=("serverless",),
        tracked_type="worker",
        groupings={"endpointId": _ENDPOINT, "gpuTypeId": _GPU},
        default_grouping="endpointId",
        resource_filter="endpointId",
    ),
    "volumes": Kind(
        products=("volumes",),
        tracked_type="volume",
        groupings={"volumeId": _RESOURCE},
        default_grouping="volumeId",
        resource_filter="volumeId",
    ),
}


def parse_time(parameter: str, value: str) -> datetime:
    """ISO 8601 (RFC 3339); a time without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SummaryError(
            parameter, f"{value!r} is not an ISO 8601 time (e.g. 2026-11-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def bucket_start(at: datetime, size: BucketSize) -> datetime:
    at = at.astimezone(UTC)
    hour = at.replace(minute=0, second=0, microsecond=0)
    if size == "hour":
        return hour
    day = hour.replace(hour=0)
    if size == "day":
        return day
    if size == "week":
        # ISO weeks start on Monday, as PostgreSQL's date_trunc('week') does.
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_bucket(start: datetime, size: BucketSize) -> datetime:
    """The start of the bucket after the one starting at `start`."""
    if size == "hour":
        return start + timedelta(hours=1)
    if size == "day":
        return start + timedelta(days=1)
    if size == "week":
        return start + timedelta(weeks=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start + timedelta(days=days)


def bucket_count(start: datetime, end: datetime, size: BucketSize) -> int:
    """How many buckets [start, end) spans, both on boundaries; stops counting past MAX_BUCKETS."""
    if size != "month":
        step = {"hour": 3600, "day": 86400, "week": 7 * 86400}[size]
        return int((end - start).total_seconds() // step)
    return (end.year - start.year) * 12 + end.month - start.month


class Window(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    bucket: BucketSize


def window(
    start: datetime | None, end: datetime | None, bucket: BucketSize, now: datetime
) -> Window:
    """The buckets a summary covers: by default the last 30 days up to now, snapped outwards to
    whole buckets. A reversed or empty range, or more than MAX_BUCKETS buckets, is refused."""
    end = end or now
    start = start or end - timedelta(days=30)
    if end <= start:
        raise SummaryError("endTime", f"must be after startTime ({start.isoformat()})")
    first = bucket_start(start, bucket)
    last = bucket_start(end, bucket)
    if last != end:
        last = next_bucket(last, bucket)
    if bucket_count(first, last, bucket) > MAX_BUCKETS:
        raise SummaryError(
            "bucketSize",
            f"{bucket} buckets from {first.isoformat()} to {last.isoformat()} are more than"
            f" {MAX_BUCKETS}: use a larger bucketSize or a shorter range",
        )
    return Window(start=first, end=last, bucket=bucket)


class SummaryQuery(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    window: Window
    grouping: str
    # Only this resource (instance, endpoint or volume id), or only this GPU type.
    resource_id: str | None = None
    gpu_type_id: str | None = None


class SummaryRow(msgspec.Struct, kw_only=True):
    """One bucket of one group: posted and not yet posted together."""

    time: datetime
    key: str | None
    amount_micros: int = 0
    # Part of amount_micros that open sessions owe and no posting holds yet.
    unposted_micros: int = 0
    gpu_seconds: int = 0
    gb_seconds: int = 0
    # Whether any of it is not yet posted (money, or seconds too short to cost a micro-dollar).
    pending: bool = False


def query_of(
    kind: str,
    window: Window,
    grouping: str | None,
    resource_id: str | None = None,
    gpu_type_id: str | None = None,
) -> SummaryQuery:
    """Check a summary's grouping and filters against its kind."""
    spec = KINDS[kind]
    grouping = grouping or spec.default_grouping
    if grouping not in spec.groupings:
        raise SummaryError(
            "grouping", f"{grouping!r} is not one of {', '.join(sorted(spec.groupings))}"
        )
    if gpu_type_id is not None and "gpuTypeId" not in spec.groupings:
        raise SummaryError("gpuTypeId", f"{kind} have no GPU type")
    return SummaryQuery(
        kind=kind,
        window=window,
        grouping=grouping,
        resource_id=resource_id,
        gpu_type_id=gpu_type_id,
    )


def _posted_sql(query: SummaryQuery) -> sql.Composed:
    spec = KINDS[query.kind]
    bucket = query.window.bucket
    table, column = ("ledger_hourly", "hour") if bucket == "hour" else ("ledger_daily", "day")
    time_expr: sql.Composable = sql.SQL("r.{}").format(sql.Identifier(column))
    if bucket in ("week", "month"):
        time_expr = sql.SQL("date_trunc({}, {}, 'UTC')").format(sql.Literal(bucket), time_expr)
    key = spec.groupings[query.grouping]
    resource_key = spec.groupings[spec.resource_filter]
    gpu_key = spec.groupings.get("gpuTypeId")
    needs_tracked = key.needs_tracked or (
        query.resource_id is not None and resource_key.needs_tracked
    )
    conditions = [
        sql.SQL("r.user_id = %(user)s"),
        sql.SQL("r.product = ANY(%(products)s)"),
        sql.SQL("r.{} >= %(start)s").format(sql.Identifier(column)),
        sql.SQL("r.{} < %(end)s").format(sql.Identifier(column)),
    ]
    if query.resource_id is not None:
        conditions.append(sql.SQL("{} = %(resource)s").format(resource_key.key))
    if query.gpu_type_id is not None and gpu_key is not None:
        needs_tracked = needs_tracked or gpu_key.needs_tracked
        conditions.append(sql.SQL("{} = %(gpu)s").format(gpu_key.key))
    join = sql.SQL("")
    if needs_tracked:
        join = sql.SQL(
            " LEFT JOIN ledger_tracked t ON t.resource_type = %(tracked)s"
            " AND t.resource_id = r.resource_id AND t.user_id = r.user_id"
        )
    statement = sql.SQL(
        "SELECT {time} AS bucket, {key} AS key, sum(r.amount_micros)::bigint,"
        " sum(CASE WHEN r.meter = ANY(%(gpu_meters)s) THEN r.seconds ELSE 0 END)::bigint,"
        " sum(r.gb_seconds)::bigint"
        " FROM {table} r{join} WHERE {conditions} GROUP BY 1, 2"
    ).format(
        time=time_expr,
        key=key.key,
        table=sql.Identifier(table),
        join=join,
        conditions=sql.SQL(" AND ").join(conditions),
    )
    return statement


# Open sessions, with what the ledger tracks of their resources.
_OPEN = (
    "SELECT p.doc::text, t.doc->>'gpu_type_id', t.doc->>'endpoint_id'"
    " FROM ledger_progress p LEFT JOIN ledger_tracked t ON t.resource_type = %(tracked)s"
    " AND t.resource_id = p.resource_id"
    " WHERE p.user_id = %(user)s AND NOT p.settled"
)


def _open_key(
    query: SummaryQuery, progress: Progress, gpu_type: str | None, endpoint: str | None
) -> tuple[str | None, str | None, str | None]:
    """(group key, resource filter key, GPU type) of an open session, as the SQL reads them."""
    session = progress.session
    if query.kind == "instances":
        gpu = session.gpu_type_id or gpu_type
        resource: str | None = session.resource_id
    elif query.kind == "serverless":
        gpu = session.gpu_type_id
        resource = endpoint
    else:
        gpu = None
        resource = session.resource_id
    key = {"gpuTypeId": gpu, "endpointId": endpoint}.get(query.grouping, session.resource_id)
    return key, resource, gpu


async def summarise(
    conn: psycopg.AsyncConnection[Any], user_id: str, query: SummaryQuery, now: datetime
) -> list[SummaryRow]:
    """The summary's rows in (time, key) order: posted, plus what open sessions owe until now."""
    spec = KINDS[query.kind]
    params = {
        "user": user_id,
        "products": list(spec.products),
        "start": query.window.start,
        "end": query.window.end,
        "resource": query.resource_id,
        "gpu": query.gpu_type_id,
        "tracked": spec.tracked_type,
        "gpu_meters": sorted(GPU_METERS),
    }
    rows: dict[tuple[datetime, str | None], SummaryRow] = {}
    cur = await conn.execute(_posted_sql(query), params)
    for bucket, key, amount, gpu_seconds, gb_seconds in await cur.fetchall():
        rows[(bucket, key)] = SummaryRow(
            time=bucket.astimezone(UTC),
            key=key,
            amount_micros=int(amount),
            gpu_seconds=int(gpu_seconds),
            gb_seconds=int(gb_seconds),
        )
    current = bucket_start(now, query.window.bucket)
    if query.window.start <= current < query.window.end:
        cur = await conn.execute(_OPEN, params)
        for doc, gpu_type, endpoint in await cur.fetchall():
            progress = _progress.decode(doc)
            if progress.session.product not in spec.products:
                continue
            key, resource, gpu = _open_key(query, progress, gpu_type, endpoint)
            if query.resource_id is not None and resource != query.resource_id:
                continue
            if query.gpu_type_id is not None and gpu != query.gpu_type_id:
                continue
            seconds = unposted_seconds(progress, now)
            micros = unposted(progress, now)
            if seconds == 0 and micros == 0:
                continue
            row = rows.get((current, key))
            if row is None:
                row = rows[(current, key)] = SummaryRow(time=current, key=key)
            row.amount_micros += micros
            row.unposted_micros += micros
            row.pending = True
            if progress.session.meter in GPU_METERS:
                row.gpu_seconds += seconds
            if progress.session.meter in STORAGE_METERS:
                row.gb_seconds += seconds * progress.session.quantity
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or ""))]
