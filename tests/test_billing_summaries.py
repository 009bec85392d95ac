"""Billing summaries and exports read from a real ledger: events through the ledger role's own
projection on real NATS and PostgreSQL, accruals at chosen times, and summaries at an injected
`now`, so every micro-dollar of the expected figures is worked out by hand below."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.endpoint import WorkerStarted, WorkerStopped
from events.ids import new_id
from events.instance import InstanceRunning, InstanceStopped, InstanceTerminated
from events.store import JetStreamEventStore
from events.user import CreditGranted
from events.volume import VolumeCreated, VolumeProvisioned
from ledger import summaries
from ledger.accruals import accrue_open_sessions
from ledger.consumer import LedgerProjection
from ledger.export import COLUMN_NAMES, ExportRange, stream_text
from ledger.summaries import (
    MAX_BUCKETS,
    SummaryError,
    SummaryRow,
    parse_time,
    query_of,
    summarise,
    window,
)
from ledger.verify import check_tables
from projections.runner import ProjectionRunner
from services.cli.embedded import EmbeddedNats
from services.nats_permissions import LEDGER_USER
from tests.servers import connect_as
from tests.test_ledger_pg import Stream, until_applied
from tests.test_ledger_tracking import created

# A Monday, at 10:00 UTC.
T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
ACCRUED_AT = T0 + timedelta(hours=2, seconds=-20)  # 11:59:40
NOW = T0 + timedelta(hours=2, seconds=80)  # 12:01:20
RTX_4090 = "NVIDIA GeForce RTX 4090"
A100 = "NVIDIA A100 80GB PCIe"
MONTH = 30 * 24 * 3600
H10, H11, H12 = T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)

# i1: 2 RTX 4090 SECURE ($0.69/h), 20 GB container disk, 50 GB volume disk; created at T0,
# running [T0+10 s, T0+1 h+10 s), terminated at T0+1 h+20 s. Nothing accrued while it ran: every
# session posts once, when it ends.
I1_STOPPED_VOLUME_BEFORE = 200_000 * 50 * 10 // MONTH  # [0, 10 s) at $0.20/GB/month, at 10:00:10
I1_GPU = 690_000 * 2 * 3600 // 3600
I1_CONTAINER = 100_000 * 20 * 3600 // MONTH
I1_VOLUME_RUNNING = 100_000 * 50 * 3600 // MONTH
I1_STOPPED_VOLUME_AFTER = 200_000 * 50 * 10 // MONTH
I1_AT_11 = I1_GPU + I1_CONTAINER + I1_VOLUME_RUNNING + I1_STOPPED_VOLUME_AFTER
I1_GB_SECONDS_11 = 20 * 3600 + 50 * 3600 + 50 * 10
# i2: 1 A100 SECURE ($1.64/h), 10 GB container disk, no volume; running from 10:30:00 and still
# running: accrued at 11:59:40 (5,380 s), and 100 s more by 12:01:20, not yet posted.
I2_GPU_POSTED = 1_640_000 * 5380 // 3600
I2_DISK_POSTED = 100_000 * 10 * 5380 // MONTH
I2_GPU_UNPOSTED = 1_640_000 * 5480 // 3600 - I2_GPU_POSTED
I2_DISK_UNPOSTED = 100_000 * 10 * 5480 // MONTH - I2_DISK_POSTED
# v1: a 100 GB network volume ($0.07/GB/month) from T0: 7,180 s accrued, 100 s more unposted.
V1_POSTED = 70_000 * 100 * 7180 // MONTH
V1_UNPOSTED = 70_000 * 100 * 7280 // MONTH - V1_POSTED
# w1: a serverless worker of endpoint e1 on one RTX 4090 ($0.00031/s) for 100 s from T0+1 h.
W1 = 310 * 100


class Scenario:
    def __init__(self) -> None:
        self.a, self.b = f"u-{new_id()}", f"u-{new_id()}"
        self.i1, self.i2, self.j1 = new_id(), new_id(), new_id()
        self.v1, self.e1, self.w1 = new_id(), new_id(), new_id()


@pytest.fixture
async def ledger(
    nats_server: EmbeddedNats, nc: NatsClient, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[Scenario]:
    """Two customers' usage, through the ledger role's projection, and one accrual cycle."""
    ledger_nc = await connect_as(nats_server, LEDGER_USER)
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    stream = Stream(store)
    s = Scenario()
    runner = ProjectionRunner(ledger_nc, pool, [LedgerProjection()])
    await runner.start()
    try:
        credit = CreditGranted(amount_micros=5_000_000, source="signup", reason="welcome")
        await stream.emit("user", s.a, T0, credit)
        await stream.emit("instance", s.i1, T0, created(host_id="h"), actor=s.a)
        await stream.emit("instance", s.i1, T0 + timedelta(seconds=10), InstanceRunning())
        half = T0 + timedelta(minutes=30)
        i2 = created(
            host_id="h", gpu_type_id=A100, gpu_count=1, container_disk_in_gb=10, volume_in_gb=0
        )
        await stream.emit("instance", s.i2, half, i2, actor=s.a)
        await stream.emit("instance", s.i2, half, InstanceRunning())
        volume = VolumeCreated(
            name="v",
            size_gb=100,
            datacenter_id="US-TX-3",
            host_id="h",
            price_per_gb_month_micros=70_000,
            rate_card_version="v",
        )
        await stream.emit("volume", s.v1, T0, volume, actor=s.a)
        await stream.emit("volume", s.v1, T0, VolumeProvisioned())
        worker = WorkerStarted(
            worker_id=s.w1, owner_id=s.a, host_id="h", gpu_type_id=RTX_4090, gpu_count=1
        )
        await stream.emit("endpoint", s.e1, H11, worker, actor="system:autoscaler")
        stopped = WorkerStopped(worker_id=s.w1, reason="idle")
        await stream.emit(
            "endpoint", s.e1, H11 + timedelta(seconds=100), stopped, actor="system:autoscaler"
        )
        await stream.emit(
            "instance", s.i1, H11 + timedelta(seconds=10), InstanceStopped(lease_id="l")
        )
        await stream.emit(
            "instance", s.i1, H11 + timedelta(seconds=20), InstanceTerminated(lease_id="l")
        )
        await stream.emit("instance", s.j1, T0, created(host_id="h", gpu_count=1), actor=s.b)
        last = await stream.emit("instance", s.j1, T0 + timedelta(seconds=10), InstanceRunning())
        await until_applied(pool, last)
    finally:
        await runner.stop()
        await ledger_nc.close()
    async with pool.connection() as conn, conn.transaction():
        await accrue_open_sessions(conn, ACCRUED_AT)
    yield s


async def summary(
    pool: AsyncConnectionPool[Any],
    user: str,
    kind: str,
    bucket: str = "hour",
    grouping: str | None = None,
    resource_id: str | None = None,
    gpu_type_id: str | None = None,
    start: datetime = T0 - timedelta(days=1),
    end: datetime = T0 + timedelta(days=1),
) -> list[SummaryRow]:
    span = window(start, end, bucket, NOW)  # type: ignore[arg-type]
    query = query_of(kind, span, grouping, resource_id, gpu_type_id)
    async with pool.connection() as conn:
        return await summarise(conn, user, query, NOW)


def table(rows: list[SummaryRow]) -> list[tuple[datetime, str | None, int, int, int, bool]]:
    return [
        (r.time, r.key, r.amount_micros, r.unposted_micros, r.gpu_seconds, r.pending) for r in rows
    ]


async def test_instances_by_gpu_type_and_by_instance_hour_by_hour(
    ledger: Scenario, pool: AsyncConnectionPool[Any]
) -> None:
    s = ledger
    by_gpu = await summary(pool, s.a, "instances")
    assert table(by_gpu) == [
        (H10, RTX_4090, I1_STOPPED_VOLUME_BEFORE, 0, 0, False),
        (H11, A100, I2_GPU_POSTED + I2_DISK_POSTED, 0, 5380, False),
        (H11, RTX_4090, I1_AT_11, 0, 3600, False),
        (
            H12,
            A100,
            I2_GPU_UNPOSTED + I2_DISK_UNPOSTED,
            I2_GPU_UNPOSTED + I2_DISK_UNPOSTED,
            100,
            True,
        ),
    ]
    assert I1_GPU == 1_380_000 and I2_GPU_UNPOSTED == 45_556
    # Storage as GB-seconds: the summary's diskSpaceBilledGb is these over the bucket's seconds.
    assert [r.gb_seconds for r in by_gpu] == [50 * 10, 10 * 5380, I1_GB_SECONDS_11, 10 * 100]

    by_instance = await summary(pool, s.a, "instances", grouping="instanceId")
    assert [(r.time, r.key, r.amount_micros) for r in by_instance] == sorted(
        [
            (H10, s.i1, I1_STOPPED_VOLUME_BEFORE),
            (H11, s.i1, I1_AT_11),
            (H11, s.i2, I2_GPU_POSTED + I2_DISK_POSTED),
            (H12, s.i2, I2_GPU_UNPOSTED + I2_DISK_UNPOSTED),
        ]
    )

    # Filters: one instance, one GPU type; another customer's instance is simply not there.
    only_i2 = await summary(pool, s.a, "instances", resource_id=s.i2)
    assert [(r.key, r.amount_micros) for r in only_i2] == [
        (A100, I2_GPU_POSTED + I2_DISK_POSTED),
        (A100, I2_GPU_UNPOSTED + I2_DISK_UNPOSTED),
    ]
    only_4090 = await summary(pool, s.a, "instances", gpu_type_id=RTX_4090, grouping="instanceId")
    assert {r.key for r in only_4090} == {s.i1}
    assert await summary(pool, s.a, "instances", resource_id=s.j1) == []
    assert {r.key for r in await summary(pool, s.b, "instances", grouping="instanceId")} == {s.j1}

    # A window that ends before now leaves out what is not yet posted.
    early = await summary(pool, s.a, "instances", end=H12)
    assert all(not r.pending for r in early) and len(early) == 3


async def test_days_weeks_months_serverless_and_volumes(
    ledger: Scenario, pool: AsyncConnectionPool[Any]
) -> None:
    s = ledger
    day = datetime(2026, 11, 30, tzinfo=UTC)
    i2_total = I2_GPU_POSTED + I2_DISK_POSTED + I2_GPU_UNPOSTED + I2_DISK_UNPOSTED
    expected = [(A100, i2_total), (RTX_4090, I1_STOPPED_VOLUME_BEFORE + I1_AT_11)]
    for bucket, start in (
        ("day", day),
        ("week", day),  # 2026-11-30 is a Monday
        ("month", datetime(2026, 11, 1, tzinfo=UTC)),
    ):
        rows = await summary(pool, s.a, "instances", bucket=bucket)
        assert [(r.key, r.amount_micros) for r in rows] == expected, bucket
        assert {r.time for r in rows} == {start}, bucket
        assert [r.pending for r in rows] == [True, False]

    serverless = await summary(pool, s.a, "serverless")
    assert table(serverless) == [(H11, s.e1, W1, 0, 100, False)]
    by_gpu = await summary(pool, s.a, "serverless", grouping="gpuTypeId", resource_id=s.e1)
    assert table(by_gpu) == [(H11, RTX_4090, W1, 0, 100, False)]
    assert await summary(pool, s.a, "serverless", resource_id=s.i1) == []
    by_day = await summary(pool, s.a, "serverless", bucket="day", grouping="gpuTypeId")
    assert table(by_day) == [(day, RTX_4090, W1, 0, 100, False)]

    volumes = await summary(pool, s.a, "volumes")
    assert table(volumes) == [
        (H11, s.v1, V1_POSTED, 0, 0, False),
        (H12, s.v1, V1_UNPOSTED, V1_UNPOSTED, 0, True),
    ]
    assert [r.gb_seconds for r in volumes] == [100 * 7180, 100 * 100]
    assert await summary(pool, s.b, "volumes") == []


async def test_exports_hold_exactly_the_postings_and_add_up_to_the_summaries(
    ledger: Scenario, pool: AsyncConnectionPool[Any]
) -> None:
    s = ledger
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, kind, amount_micros, product, resource_id, seconds, session_id"
            " FROM ledger_postings WHERE user_id = %s ORDER BY at, id",
            (s.a,),
        )
        postings = await cur.fetchall()
        mine = ExportRange(user_id=s.a)
        chunks = {
            fmt: b"".join([c async for c in stream_text(conn, fmt, mine)])
            for fmt in ("csv", "jsonl")
        }
        assert await check_tables(conn) == []
    as_csv = list(csv.DictReader(io.StringIO(chunks["csv"].decode())))
    as_jsonl = [json.loads(line) for line in chunks["jsonl"].decode().splitlines()]
    assert tuple(as_csv[0]) == COLUMN_NAMES
    assert tuple(as_jsonl[0]) == COLUMN_NAMES
    assert len(as_csv) == len(as_jsonl) == len(postings) > 5
    for row, line, posting in zip(as_csv, as_jsonl, postings, strict=True):
        posting_id, kind, amount, product, resource_id, seconds, session_id = posting
        assert row["posting_id"] == line["posting_id"] == posting_id
        assert row["kind"] == line["kind"] == kind
        assert int(row["amount_micros"]) == line["amount_micros"] == amount
        assert (row["product"] or None) == line["product"] == product
        assert (row["resource_id"] or None) == line["resource_id"] == resource_id
        assert int(row["seconds"]) == line["seconds"] == seconds
        assert (row["session_id"] or None) == line["session_id"] == session_id
        assert row["time"] == line["time"] and row["time"].endswith("Z")
        assert row["user_id"] == line["user_id"] == s.a
    # The credit is there too, from funding:signup.
    credits = [line for line in as_jsonl if line["kind"] == "credit"]
    assert [(c["debit_account"], c["amount_micros"]) for c in credits] == [
        ("funding:signup", 5_000_000)
    ]

    def usage(kind: str) -> int:
        products = {
            "instances": ("instances.gpu", "instances.storage"),
            "volumes": ("volumes",),
            "serverless": ("serverless",),
        }[kind]
        return sum(
            (1 if line["kind"] == "usage" else -1) * line["amount_micros"]
            for line in as_jsonl
            if line["product"] in products
        )

    for kind in ("instances", "volumes", "serverless"):
        rows = await summary(pool, s.a, kind, bucket="day")
        posted = sum(r.amount_micros - r.unposted_micros for r in rows)
        assert posted == usage(kind), kind

    # A range of the export is exactly the postings in it.
    async with pool.connection() as conn:
        ranged = b"".join(
            [
                c
                async for c in stream_text(
                    conn, "jsonl", ExportRange(user_id=s.a, start=H11, end=H12)
                )
            ]
        )
    times = [json.loads(line)["time"] for line in ranged.decode().splitlines()]
    assert times and all("T11:" in t for t in times)


def test_windows_snap_to_buckets_and_bad_parameters_are_named() -> None:
    now = datetime(2026, 11, 30, 12, 1, 20, tzinfo=UTC)
    span = window(None, None, "day", now)
    assert (span.start, span.end) == (
        datetime(2026, 10, 31, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    span = window(parse_time("startTime", "2026-11-30T10:15:00+02:00"), now, "hour", now)
    assert (span.start, span.end) == (
        datetime(2026, 11, 30, 8, tzinfo=UTC),
        datetime(2026, 11, 30, 13, tzinfo=UTC),
    )
    span = window(None, now, "month", now)
    assert (span.start, span.end) == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert parse_time("endTime", "2026-11-30") == datetime(2026, 11, 30, tzinfo=UTC)

    def refused(parameter: str, call: Any) -> None:
        with pytest.raises(SummaryError) as caught:
            call()
        assert caught.value.parameter == parameter
        assert f"`{parameter}`" in str(caught.value)

    refused("startTime", lambda: parse_time("startTime", "yesterday"))
    refused("endTime", lambda: window(now, now - timedelta(seconds=1), "day", now))
    refused("endTime", lambda: window(now, now, "day", now))
    refused(
        "bucketSize",
        lambda: window(now - timedelta(hours=MAX_BUCKETS + 1), now, "hour", now),
    )
    assert window(now - timedelta(hours=MAX_BUCKETS - 2), now, "hour", now)
    refused("grouping", lambda: query_of("volumes", span, "gpuTypeId"))
    refused("grouping", lambda: query_of("instances", span, "endpointId"))
    refused("gpuTypeId", lambda: query_of("volumes", span, None, gpu_type_id=RTX_4090))


async def test_a_summary_too_long_for_one_answer_is_refused(
    ledger: Scenario, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summaries, "MAX_RECORDS", 2)
    assert len(await summary(pool, ledger.a, "instances", grouping="instanceId", end=H11)) == 1
    with pytest.raises(SummaryError) as caught:
        await summary(pool, ledger.a, "instances", grouping="instanceId")
    assert caught.value.parameter == "bucketSize" and "more than 2 records" in str(caught.value)
