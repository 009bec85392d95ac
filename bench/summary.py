"""GET /billing/instances for a customer with 1,000 instances over 10 million postings, against
the same aggregate queries run straight on PostgreSQL.

    .venv/bin/python bench/summary.py [--postings 10000000] [--resources 1000] [--requests 300]

Setup: embedded PostgreSQL and nats-server in a temp dir, migrated; generated straight into the
ledger's tables with set-based SQL (no API, no events): `--resources` instances of one customer,
each with a GPU session and a container disk session, posted every few minutes over the last 30
days (`--postings` rows in ledger_postings, with its indexes), the hourly, daily and
per-GPU-type rollups the ledger keeps from them, what the ledger tracks of each instance, and
every instance still running (an open session per meter, so the summary also counts what is not
yet posted).

Product: `gpuworker api` (one process, as `services/roles/api.py` runs it), a signed access token;
`--requests` sequential GETs (keep-alive, after a warm-up) of the default summary (last 30 days,
day buckets, grouped by gpuTypeId) and, for information, `--info-requests` grouped by instanceId
(one record per instance per day: 30,000 records). Baseline (same run, same data): the same two
queries the route runs (`ledger.summaries`: the rollup aggregate, then the open sessions),
straight on PostgreSQL from this process, without HTTP, auth or JSON. Goal: product p99 <= 50 ms."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from benchlib import (
    HOST,
    NatsServer,
    Postgres,
    free_port,
    machine_line,
    make_workdir,
    remove_workdir,
    sigterm_as_interrupt,
    stop_tree,
    tail,
    verdict,
)
from fleet_lib import percentile
from litestar.security.jwt import Token

from ledger.summaries import query_of, summarise, window
from projections.migrate import migrate
from services.cli.embedded import load_or_create_secrets

GOAL_P99_MS = 50.0
USER = "bench-customer"
GPU_TYPES = ("NVIDIA GeForce RTX 4090", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3")
MONTH = 30 * 24 * 3600


def generate_sql(postings: int, resources: int, end: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Set-based SQL that writes what the ledger would have written for this usage."""
    per_meter = postings // (resources * 2)
    span_s = 30 * 86400 - 3600
    step = max(1, span_s // per_meter)
    start = end - timedelta(seconds=step * per_meter + 60)
    params = {
        "user": USER,
        "resources": resources,
        "per_meter": per_meter,
        "step": step,
        "start": start,
        "gpus": list(GPU_TYPES),
        "month": MONTH,
    }
    sessions = """
        INSERT INTO ledger_sessions (id, user_id, resource_type, resource_id, product, meter, slot,
            tier, gpu_type_id, quantity, unit_price_micros, per_seconds, rate_card_version,
            started_at, opened_by_sequence)
        SELECT 's-' || r || '-' || m, %(user)s, 'instance', 'instance-' || r,
            CASE m WHEN 0 THEN 'instances.gpu' ELSE 'instances.storage' END,
            CASE m WHEN 0 THEN 'instance.gpu' ELSE 'instance.container_disk' END,
            CASE m WHEN 0 THEN 'instance.gpu' ELSE 'instance.container_disk' END,
            CASE m WHEN 0 THEN 'secure' ELSE 'running' END,
            CASE m WHEN 0 THEN (%(gpus)s::text[])[1 + r %% 3] END,
            CASE m WHEN 0 THEN 1 ELSE 20 END,
            CASE m WHEN 0 THEN 690000 ELSE 100000 END,
            CASE m WHEN 0 THEN 3600 ELSE %(month)s::int END,
            '2026-11-30', %(start)s, r * 2 + m
        FROM generate_series(0, %(resources)s::int - 1) r, generate_series(0, 1) m
    """
    posts = """
        INSERT INTO ledger_postings (id, at, user_id, debit, credit, amount_micros, kind, product,
            meter, resource_id, gpu_type_id, quantity, unit_price_micros, seconds, session_id,
            rate_card_version)
        SELECT md5(s.id || ':' || k)::uuid::text,
            s.started_at + (k * %(step)s::bigint) * interval '1s',
            s.user_id, 'customer:' || s.user_id, 'revenue:' || s.product,
            greatest(1, s.unit_price_micros * s.quantity * %(step)s::bigint / s.per_seconds),
            'usage',
            s.product, s.meter, s.resource_id, s.gpu_type_id, s.quantity, s.unit_price_micros,
            %(step)s::bigint, s.id, s.rate_card_version
        FROM ledger_sessions s, generate_series(1, %(per_meter)s::int) k
    """
    rollups = [
        f"""
        INSERT INTO {table} (user_id, product, meter, resource_id, gpu_type_id, {column},
            amount_micros, seconds, gb_seconds)
        SELECT user_id, product, meter, resource_id, COALESCE(gpu_type_id, ''),
            date_trunc('{unit}', at, 'UTC'), sum(amount_micros), sum(seconds),
            sum(CASE WHEN meter = 'instance.gpu' THEN 0 ELSE seconds * quantity END)
        FROM ledger_postings GROUP BY 1, 2, 3, 4, 5, 6
        """
        for table, column, unit in (
            ("ledger_hourly", "hour", "hour"),
            ("ledger_daily", "day", "day"),
        )
    ]
    tracked = """
        INSERT INTO ledger_tracked (resource_type, resource_id, user_id, host_id, doc)
        SELECT 'instance', 'instance-' || r, %(user)s, 'h',
            jsonb_build_object('resource_type', 'instance', 'resource_id', 'instance-' || r,
                'user_id', %(user)s::text, 'running', true, 'gpu_type_id',
                (%(gpus)s::text[])[1 + r %% 3], 'gpu_count', 1)
        FROM generate_series(0, %(resources)s::int - 1) r
    """
    progress = """
        INSERT INTO ledger_progress (session_id, user_id, resource_id, settled,
            rate_per_hour_micros, doc)
        SELECT s.id, s.user_id, s.resource_id, false,
            s.unit_price_micros * s.quantity * 3600 / s.per_seconds,
            jsonb_build_object('session', jsonb_build_object('id', s.id, 'user_id', s.user_id,
                'resource_type', 'instance', 'resource_id', s.resource_id, 'product', s.product,
                'meter', s.meter, 'slot', s.slot, 'tier', s.tier, 'gpu_type_id', s.gpu_type_id,
                'quantity', s.quantity, 'unit_price_micros', s.unit_price_micros,
                'per_seconds', s.per_seconds, 'rate_card_version', s.rate_card_version,
                'started_at', to_char(s.started_at AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                'posted_micros', p.posted, 'billed_seconds', %(per_meter)s::int * %(step)s::bigint,
                'settled', false)
        FROM ledger_sessions s JOIN (SELECT session_id, sum(amount_micros) AS posted
            FROM ledger_postings GROUP BY session_id) p ON p.session_id = s.id
    """
    by_gpu = """
        INSERT INTO ledger_daily_gpu (user_id, product, gpu_type_id, day, amount_micros,
            gpu_seconds, gb_seconds)
        SELECT d.user_id, d.product, COALESCE(NULLIF(d.gpu_type_id, ''), t.doc->>'gpu_type_id'),
            d.day, sum(d.amount_micros),
            sum(CASE WHEN d.meter = 'instance.gpu' THEN d.seconds ELSE 0 END), sum(d.gb_seconds)
        FROM ledger_daily d LEFT JOIN ledger_tracked t ON t.resource_type = 'instance'
            AND t.resource_id = d.resource_id
        GROUP BY 1, 2, 3, 4
    """
    return [(sessions, params), (posts, params), *[(r, {}) for r in rollups],
            (tracked, params), (by_gpu, {}), (progress, params)]  # fmt: skip


async def load(url: str, args: argparse.Namespace, now: datetime) -> None:
    await migrate(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # Indexes built once after the rows are in (as a restore would), not row by row.
        cur = await conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ledger_postings'"
            " AND indexname <> 'ledger_postings_pkey'"
        )
        indexes = await cur.fetchall()
        for name, _ in indexes:
            await conn.execute(f"DROP INDEX {name}")
        for statement, params in generate_sql(args.postings, args.resources, now):
            started = time.perf_counter()
            await conn.execute(statement, params)
            what = statement.split("INTO")[1].split()[0]
            print(f"[summary] {what}: {time.perf_counter() - started:.1f}s", flush=True)
        for _, definition in indexes:
            await conn.execute(definition)
        await conn.execute("VACUUM ANALYZE")
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM ledger_postings), (SELECT count(*) FROM ledger_hourly),"
            " (SELECT count(*) FROM ledger_daily), (SELECT count(*) FROM ledger_progress)"
        )
        counts = await cur.fetchone()
        print(f"[summary] postings, hourly, daily, open sessions: {counts}", flush=True)


class Api:
    def __init__(self, workdir: Path, postgres: Postgres, nats: NatsServer) -> None:
        keys = load_or_create_secrets(workdir / "keys")
        self.secret = keys["jwt_secret"]
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = workdir / "api.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GPUWORKER_")},
            "DATABASE_URL": postgres.url,
            "NATS_URL": nats.url,
            "GPUWORKER_NATS_CREDENTIALS": str(nats.credentials_path),
            "GPUWORKER_SECRET_KEY": keys["secret_key"],
            "GPUWORKER_JWT_SECRET": keys["jwt_secret"],
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def token(self) -> str:
        exp = datetime.now(UTC) + timedelta(hours=2)
        return Token(sub=USER, exp=exp).encode(self.secret, "HS256")

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "api", "--host", HOST,
                 "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc, timeout_s=20)
            self.proc = None


def timed_http(url: str, token: str, params: dict[str, str], count: int) -> tuple[list[float], int]:
    with httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        size = 0
        for _ in range(20):
            response = client.get(url, params=params)
            assert response.status_code == 200, response.text
            size = len(response.json())
        times = []
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(url, params=params)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    return times, size


async def timed_sql(url: str, grouping: str, count: int) -> tuple[list[float], int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        size = 0
        times = []
        for n in range(count + 20):
            started = time.perf_counter()
            now = datetime.now(UTC)
            query = query_of("instances", window(None, None, "day", now), grouping)
            rows = await summarise(conn, USER, query, now)
            if n >= 20:
                times.append((time.perf_counter() - started) * 1000)
            size = len(rows)
    return times, size


def line(label: str, times: list[float], records: int) -> str:
    return (
        f"  {label:<44}{statistics.median(times):>8.1f}{percentile(times, 99):>8.1f}"
        f"{max(times):>8.1f}{records:>9,}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postings", type=int, default=10_000_000)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--info-requests", type=int, default=50, help="for the instanceId grouping (information)"
    )
    args = parser.parse_args()
    sigterm_as_interrupt()
    workdir = make_workdir("summary")
    postgres, nats = Postgres(workdir), NatsServer(workdir, sync_always=False)
    api = Api(workdir, postgres, nats)
    try:
        postgres.start()
        nats.start()
        api.env["DATABASE_URL"] = postgres.url
        started = time.perf_counter()
        asyncio.run(load(postgres.url, args, datetime.now(UTC)))
        print(f"[summary] data generated in {time.perf_counter() - started:.0f}s", flush=True)
        api.start()
        token = api.token()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{api.url}/billing/volumes", headers={"authorization":
                             f"Bearer {token}"}, timeout=5).status_code == 200:  # fmt: skip
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"api did not answer:\n{tail(api.log)}")
            time.sleep(0.3)
        route = f"{api.url}/billing/instances"
        results = []
        for grouping, count in (("gpuTypeId", args.requests), ("instanceId", args.info_requests)):
            http, http_n = timed_http(route, token, {"grouping": grouping}, count)
            raw, raw_n = asyncio.run(timed_sql(postgres.url, grouping, count))
            assert http_n == raw_n, (http_n, raw_n)
            results.append((grouping, http, raw, http_n))
    finally:
        api.stop()
        nats.stop()
        postgres.stop()
        remove_workdir(workdir)
    print()
    print("=" * 100)
    print(
        f"BENCH summary: GET /billing/instances, one customer with {args.resources:,} instances,"
        f" {args.postings:,} postings over 30 days, day buckets"
    )
    print(
        f"  {machine_line()}; {args.requests} (gpuTypeId) and {args.info_requests} (instanceId)"
        " sequential requests (keep-alive)"
    )
    print(f"  {'':<44}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'records':>9}")
    for grouping, http, raw, size in results:
        print(line(f"product  grouping={grouping}", http, size))
        print(line(f"baseline grouping={grouping} (SQL only)", raw, size))
    default_http, default_raw = results[0][1], results[0][2]
    p99 = percentile(default_http, 99)
    print(f"  ratio product/baseline p99 (gpuTypeId): {p99 / percentile(default_raw, 99):.2f}x")
    print(f"  product p99 (default summary): {p99:.1f} ms   goal <= {GOAL_P99_MS:.0f} ms   ->"
          f" {verdict(p99 <= GOAL_P99_MS)}")  # fmt: skip
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
