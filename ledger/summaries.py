"""Billing summaries: what a customer's instances, serverless endpoints or volumes cost, bucket by
bucket (hour, day, week or month, in UTC), grouped by resource or GPU type.

Read from the ledger's rollups only (`ledger_hourly` for hours, `ledger_daily` for longer
buckets, `ledger_daily_gpu` when grouped by GPU type), so a summary costs what the rollup holds,
not what was posted. A charge counts in the
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

from ledger.store import GPU_METERS, STORAGE_METERS

BucketSize = Literal["hour", "day", "week", "month"]
BUCKET_SIZES: tuple[BucketSize, ...] = ("hour", "day", "week", "month")
# A summary is a list bounded by its window: at most this many buckets, and records.
MAX_BUCKETS = 10_000
MAX_RECORDS = 100_000


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
    sql.SQL("COALESCE(NULLIF(r.gpu_type_id, ''), t.gpu_type_id)"), needs_tracked=True
)
_GPU = Grouping(sql.SQL("NULLIF(r.gpu_type_id, '')"), needs_tracked=False)
_ENDPOINT = Grouping(sql.SQL("t.endpoint_id"), needs_tracked=True)

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


# What open sessions owe beyond their postings right now, shaped like a rollup row: the arithmetic
# of `ledger.book.unposted` (and of the seconds since the last accrual), inside PostgreSQL as the
# accrual cycle does, so no session document travels here.
_OWING = """
WITH open_sessions AS (
    SELECT doc->'session' AS s, (doc->>'posted_micros')::bigint AS posted,
        (doc->>'billed_seconds')::bigint AS billed,
        greatest(0, floor(extract(epoch FROM
            %(now)s - (doc->'session'->>'started_at')::timestamptz)))::bigint AS seconds
    FROM ledger_progress WHERE user_id = %(user)s AND NOT settled
), owing AS (
    SELECT s->>'user_id' AS user_id, s->>'product' AS product, s->>'meter' AS meter,
        s->>'resource_id' AS resource_id, COALESCE(s->>'gpu_type_id', '') AS gpu_type_id,
        greatest(0, (s->>'unit_price_micros')::bigint * (s->>'quantity')::bigint * seconds
            / (s->>'per_seconds')::bigint - posted) AS amount_micros,
        greatest(0, seconds - billed) AS seconds,
        CASE WHEN s->>'meter' = ANY(%(storage)s)
            THEN greatest(0, seconds - billed) * (s->>'quantity')::bigint ELSE 0 END AS gb_seconds
    FROM open_sessions
)
"""


def by_gpu_rollup(query: SummaryQuery) -> bool:
    """Whether the per-GPU-type daily rollup answers the (posted part of the) summary: grouped by
    GPU type, in buckets of a day or more, and not narrowed to one resource."""
    return (
        query.grouping == "gpuTypeId"
        and query.window.bucket != "hour"
        and query.resource_id is None
    )


def _summary_sql(query: SummaryQuery, unposted: bool) -> sql.Composed:
    """The summary's rows from the rollups (posted), or from open sessions (not yet posted, all
    in the bucket of now): the same grouping and filters over the same row shape."""
    spec = KINDS[query.kind]
    bucket = query.window.bucket
    conditions: list[sql.Composable] = [
        sql.SQL("r.user_id = %(user)s"),
        sql.SQL("r.product = ANY(%(products)s)"),
    ]
    if not unposted and by_gpu_rollup(query):
        conditions += [sql.SQL("r.day >= %(start)s"), sql.SQL("r.day < %(end)s")]
        if query.gpu_type_id is not None:
            conditions.append(sql.SQL("r.gpu_type_id = %(gpu)s"))
        day: sql.Composable = sql.SQL("r.day")
        if bucket != "day":
            day = sql.SQL("date_trunc({}, r.day, 'UTC')").format(sql.Literal(bucket))
        return sql.SQL(
            "SELECT {day} AS bucket, NULLIF(r.gpu_type_id, '') AS key,"
            " sum(r.amount_micros)::bigint, sum(r.gpu_seconds)::bigint,"
            " sum(r.gb_seconds)::bigint FROM ledger_daily_gpu r WHERE {conditions}"
            " GROUP BY 1, 2 LIMIT {limit}"
        ).format(
            day=day,
            conditions=sql.SQL(" AND ").join(conditions),
            limit=sql.Literal(MAX_RECORDS + 1),
        )
    if unposted:
        prefix: sql.Composable = sql.SQL(_OWING)
        source: sql.Composable = sql.SQL("owing r")
        time_expr: sql.Composable = sql.SQL("%(current)s::timestamptz")
        conditions.append(sql.SQL("(r.amount_micros > 0 OR r.seconds > 0)"))
    else:
        table, column = ("ledger_hourly", "hour") if bucket == "hour" else ("ledger_daily", "day")
        prefix = sql.SQL("")
        source = sql.SQL("{} r").format(sql.Identifier(table))
        time_expr = sql.SQL("r.{}").format(sql.Identifier(column))
        conditions += [
            sql.SQL("r.{} >= %(start)s").format(sql.Identifier(column)),
            sql.SQL("r.{} < %(end)s").format(sql.Identifier(column)),
        ]
        if bucket in ("week", "month"):
            time_expr = sql.SQL("date_trunc({}, {}, 'UTC')").format(sql.Literal(bucket), time_expr)
    key = spec.groupings[query.grouping]
    resource_key = spec.groupings[spec.resource_filter]
    gpu_key = spec.groupings.get("gpuTypeId")
    needs_tracked = key.needs_tracked
    if query.resource_id is not None:
        needs_tracked = needs_tracked or resource_key.needs_tracked
        conditions.append(sql.SQL("{} = %(resource)s").format(resource_key.key))
    if query.gpu_type_id is not None and gpu_key is not None:
        needs_tracked = needs_tracked or gpu_key.needs_tracked
        conditions.append(sql.SQL("{} = %(gpu)s").format(gpu_key.key))
    join = sql.SQL("")
    if needs_tracked:
        # What the ledger tracks of the customer's resources, read once per resource (not once
        # per rollup row).
        # (OFFSET 0 keeps the planner from folding it into the join, which would read the
        # documents again for every row.)
        join = sql.SQL(
            " LEFT JOIN (SELECT resource_id, doc->>'gpu_type_id' AS gpu_type_id,"
            " doc->>'endpoint_id' AS endpoint_id FROM ledger_tracked"
            " WHERE user_id = %(user)s AND resource_type = %(tracked)s OFFSET 0) t"
            " ON t.resource_id = r.resource_id"
        )
    return sql.SQL(
        "{prefix}SELECT {time} AS bucket, {key} AS key, sum(r.amount_micros)::bigint,"
        " sum(CASE WHEN r.meter = ANY(%(gpu_meters)s) THEN r.seconds ELSE 0 END)::bigint,"
        " sum(r.gb_seconds)::bigint"
        " FROM {source}{join} WHERE {conditions} GROUP BY 1, 2 LIMIT {limit}"
    ).format(
        limit=sql.Literal(MAX_RECORDS + 1),
        prefix=prefix,
        time=time_expr,
        key=key.key,
        source=source,
        join=join,
        conditions=sql.SQL(" AND ").join(conditions),
    )


async def summarise(
    conn: psycopg.AsyncConnection[Any], user_id: str, query: SummaryQuery, now: datetime
) -> list[SummaryRow]:
    """The summary's rows in (time, key) order: posted, plus what open sessions owe until now.
    `conn` must not be in a transaction: both reads share one of their own (one snapshot, so an
    accrual between them can neither count twice nor vanish)."""
    spec = KINDS[query.kind]
    current = bucket_start(now, query.window.bucket)
    params = {
        "user": user_id,
        "products": list(spec.products),
        "start": query.window.start,
        "end": query.window.end,
        "resource": query.resource_id,
        "gpu": query.gpu_type_id,
        "tracked": spec.tracked_type,
        "gpu_meters": sorted(GPU_METERS),
        "storage": sorted(STORAGE_METERS),
        "now": now,
        "current": current,
    }
    rows: dict[tuple[datetime, str | None], SummaryRow] = {}
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # A month of a large customer's rollup rows is aggregated in memory, not sorted on disk.
        await conn.execute("SET LOCAL work_mem = '32MB'")
        cur = await conn.execute(_summary_sql(query, unposted=False), params)
        posted = await cur.fetchall()
        if len(posted) > MAX_RECORDS:
            raise SummaryError(
                "bucketSize",
                f"the summary would hold more than {MAX_RECORDS:,} records: use a larger"
                " bucketSize, a shorter range, another grouping or a filter",
            )
        for bucket, key, amount, gpu_seconds, gb_seconds in posted:
            rows[(bucket, key)] = SummaryRow(
                time=bucket.astimezone(UTC),
                key=key,
                amount_micros=int(amount),
                gpu_seconds=int(gpu_seconds),
                gb_seconds=int(gb_seconds),
            )
        if query.window.start <= current < query.window.end:
            cur = await conn.execute(_summary_sql(query, unposted=True), params)
            for _bucket, key, amount, gpu_seconds, gb_seconds in await cur.fetchall():
                row = rows.get((current, key))
                if row is None:
                    row = rows[(current, key)] = SummaryRow(time=current, key=key)
                row.amount_micros += int(amount)
                row.unposted_micros += int(amount)
                row.gpu_seconds += int(gpu_seconds)
                row.gb_seconds += int(gb_seconds)
                row.pending = True
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or ""))]
