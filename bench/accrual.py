"""One accrual cycle over 100,000 open usage sessions vs a raw COPY of as many posting rows.

    .venv/bin/python bench/accrual.py [--sessions 100000] [--users 10000]

Setup: embedded PostgreSQL in a temp dir, migrated; `--sessions` open sessions (GPU time,
container disk and volume disk of instances, 10 per customer by default) written with COPY into
ledger_sessions and ledger_progress, as the ledger role would have opened them 10 minutes ago;
then one warm-up cycle 60 s before the measured one, so each session has been posted once and
its rollup rows exist (the steady state of a ledger accruing every minute).

Product: what the ledger role's timer does each cycle (services/roles/ledger.py `Accruals.cycle`):
`accrue_open_sessions` in one transaction (read and lock every open session, one posting each,
balances, hourly and daily rollups, progress saved), then `over_limit` (who is past their balance
or budget). Baseline (same run): one COPY of the same number of posting rows, the product's own
from the measured cycle, into a table shaped and indexed like ledger_postings, and its commit.
Goal: the product's cycle in <= 2 s."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from benchlib import (
    CpuMeter,
    Postgres,
    machine_line,
    make_workdir,
    remove_workdir,
    sigterm_as_interrupt,
    verdict,
)

from events.ids import new_id
from ledger.accruals import accrue_open_sessions
from ledger.book import Progress
from ledger.spend_control import over_limit
from ledger.store import rate_per_hour
from ledger.usage import Session
from projections.migrate import migrate

GOAL_S = 2.0
COLUMNS = (
    "id, at, user_id, debit, credit, amount_micros, kind, product, meter, resource_id,"
    " gpu_type_id, quantity, unit_price_micros, seconds, session_id, rate_card_version, reason"
)
MONTH = 30 * 24 * 3600
# (meter, product, tier, quantity, unit price, per seconds)
KINDS = (
    ("instance.gpu", "instances.gpu", "secure", 1, 690_000, 3600),
    ("instance.container_disk", "instances.storage", "running", 20, 100_000, MONTH),
    ("instance.volume_disk", "instances.storage", "running", 50, 100_000, MONTH),
)


def sessions(count: int, users: int, opened: datetime) -> list[Session]:
    rng = random.Random(7)
    made = []
    for n in range(count):
        meter, product, tier, quantity, price, per = KINDS[n % len(KINDS)]
        made.append(
            Session(
                id=new_id(),
                user_id=f"user-{n % users:06d}",
                resource_type="instance",
                resource_id=f"instance-{n // len(KINDS):07d}",
                product=product,
                meter=meter,
                slot=meter,
                tier=tier,
                gpu_type_id="NVIDIA GeForce RTX 4090" if meter == "instance.gpu" else None,
                quantity=quantity * rng.choice((1, 2)),
                unit_price_micros=price,
                per_seconds=per,
                rate_card_version="2026-11-30",
                # Sub-second starts, as hosts report them.
                started_at=opened + timedelta(microseconds=rng.randrange(1_000_000)),
            )
        )
    return made


async def load(conn: psycopg.AsyncConnection[Any], made: list[Session]) -> None:
    encode = msgspec.json.Encoder().encode
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY ledger_sessions (id, user_id, resource_type, resource_id, product, meter, slot,"
            " tier, gpu_type_id, quantity, unit_price_micros, per_seconds, rate_card_version,"
            " started_at, opened_by_sequence) FROM STDIN"
        ) as copy:
            for n, s in enumerate(made):
                await copy.write_row(
                    (s.id, s.user_id, s.resource_type, s.resource_id, s.product, s.meter, s.slot,
                     s.tier, s.gpu_type_id, s.quantity, s.unit_price_micros, s.per_seconds,
                     s.rate_card_version, s.started_at, n + 1)
                )  # fmt: skip
        async with cur.copy(
            "COPY ledger_progress (session_id, user_id, resource_id, settled,"
            " rate_per_hour_micros, doc) FROM STDIN"
        ) as copy:
            for s in made:
                doc = encode(Progress(session=s)).decode()
                await copy.write_row((s.id, s.user_id, s.resource_id, False, rate_per_hour(s), doc))
    await conn.commit()


async def baseline(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> float:
    await conn.execute("CREATE TABLE bench_postings (LIKE ledger_postings INCLUDING ALL)")
    await conn.commit()
    started = time.perf_counter()
    async with (
        conn.cursor() as cur,
        cur.copy(f"COPY bench_postings ({COLUMNS}) FROM STDIN") as copy,
    ):
        for row in rows:
            await copy.write_row(row)
    await conn.commit()
    return time.perf_counter() - started


async def run(postgres: Postgres, args: argparse.Namespace) -> None:
    await migrate(postgres.url)
    now = datetime.now(UTC).replace(microsecond=0)
    made = sessions(args.sessions, args.users, now - timedelta(minutes=10))
    async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
        started = time.perf_counter()
        await load(conn, made)
        print(
            f"[accrual] {len(made):,} open sessions loaded in {time.perf_counter() - started:.1f}s"
        )
        async with conn.transaction():
            warm = await accrue_open_sessions(conn, now - timedelta(seconds=60))
        await conn.execute("VACUUM ANALYZE")
        print(f"[accrual] warm-up cycle posted {warm:,}")

        meter = CpuMeter(postgres.pids)
        meter.start()
        py_started = time.process_time()
        started = time.perf_counter()
        async with conn.transaction():
            posted = await accrue_open_sessions(conn, now)
        accrued_s = time.perf_counter() - started
        verdicts = await over_limit(conn, now)
        cycle_s = time.perf_counter() - started
        py_cpu = time.process_time() - py_started
        pg_cpu = meter.stop()
        print(f"[accrual] product cycle: {cycle_s:.2f}s ({posted:,} postings)")

        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM ledger_postings WHERE at > %s", (now - timedelta(seconds=30),)
        )
        rows = await cur.fetchall()
        raw_s = await baseline(conn, rows)
        print(f"[accrual] raw COPY of {len(rows):,} postings: {raw_s:.2f}s")
    report(args, posted, accrued_s, cycle_s, len(verdicts), py_cpu, pg_cpu, len(rows), raw_s)


def report(
    args: argparse.Namespace,
    posted: int,
    accrued_s: float,
    cycle_s: float,
    over: int,
    py_cpu: float,
    pg_cpu: float,
    raw_rows: int,
    raw_s: float,
) -> None:
    print()
    print("=" * 100)
    print(
        f"BENCH accrual: one cycle over {args.sessions:,} open sessions ({args.users:,} customers)"
    )
    print(f"  {machine_line()}")
    print(
        f"  product cycle            {cycle_s:7.2f} s  ({posted:,} postings; accrue"
        f" {accrued_s:.2f} s, spend check {cycle_s - accrued_s:.2f} s, {over} customer(s) over)"
    )
    print(f"    CPU: ledger process {py_cpu:.2f} s, PostgreSQL {pg_cpu:.2f} s")
    print(f"  raw COPY (baseline)      {raw_s:7.2f} s  ({raw_rows:,} posting rows, indexed table)")
    print(f"  ratio product/baseline time: {cycle_s / raw_s:.2f}x (no ratio goal was set)")
    ok = verdict(cycle_s <= GOAL_S)
    print(f"  product cycle: {cycle_s:.2f} s   goal <= {GOAL_S:.1f} s   -> {ok}")
    print("=" * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    sigterm_as_interrupt()
    workdir = make_workdir("accrual")
    postgres = Postgres(workdir)
    try:
        postgres.start()
        asyncio.run(run(postgres, args))
    finally:
        postgres.stop()
        remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
