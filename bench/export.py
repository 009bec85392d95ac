"""The finance export: 1 million postings to CSV with `gpuworker ledger export`, against a raw
`COPY ledger_postings TO STDOUT` of the same rows in the same run.

    .venv/bin/python bench/export.py [--postings 1000000]

Setup: embedded PostgreSQL in a temp dir, migrated; `--postings` postings (with the ledger's
indexes) generated straight into the tables as bench/summary.py does.

Product: `gpuworker ledger export --format csv --output FILE` as an operator runs it (its own
process, start-up included; no terminal, so no progress bar), and for information the same from
this process (`ledger.export.stream_text` to a file), JSON Lines, and Parquet. Baseline: one
`COPY ledger_postings TO STDOUT (FORMAT csv)` from this process into a file, no ordering, no
formatting of its own. rows/s = postings / wall seconds. Goals: CSV >= 200,000 rows/s and
>= 0.5x the raw COPY's rate."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from benchlib import (
    Postgres,
    machine_line,
    make_workdir,
    remove_workdir,
    sigterm_as_interrupt,
    verdict,
)
from summary import load

from ledger.export import ExportRange, stream_text, write_parquet

GOAL_ROWS_PER_S = 200_000
GOAL_RATIO = 0.5


async def raw_copy(url: str, target: Path) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        with target.open("wb") as sink:
            async with (
                conn.cursor() as cur,
                cur.copy("COPY ledger_postings TO STDOUT (FORMAT csv, HEADER)") as copy,
            ):
                async for chunk in copy:
                    sink.write(chunk)
        return time.perf_counter() - started


async def in_process(url: str, fmt: str, target: Path) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        if fmt == "parquet":
            async with conn.transaction():
                await write_parquet(conn, ExportRange(), target)
        else:
            with target.open("wb") as sink:
                async for chunk in stream_text(conn, "csv" if fmt == "csv" else "jsonl",
                                               ExportRange()):  # fmt: skip
                    sink.write(chunk)
        return time.perf_counter() - started


def cli(url: str, fmt: str, target: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWORKER_")}
    env.update(
        DATABASE_URL=url,
        NATS_URL="nats://127.0.0.1:1",  # not used by the export
        GPUWORKER_SECRET_KEY="unused",
        GPUWORKER_JWT_SECRET="unused",
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "ledger", "export", "--format", fmt,
         "--output", str(target)],
        env=env, capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ledger export failed:\n{done.stderr}")
    return elapsed


def lines_in(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postings", type=int, default=1_000_000)
    args = parser.parse_args()
    sigterm_as_interrupt()
    workdir = make_workdir("export")
    postgres = Postgres(workdir)
    results: list[tuple[str, float, int, int]] = []
    try:
        postgres.start()
        load_args = argparse.Namespace(postings=args.postings, resources=100)
        asyncio.run(load(postgres.url, load_args, datetime.now(UTC)))
        rows = args.postings
        runs: list[tuple[str, Callable[[Path], float], Path]] = [
            ("raw COPY TO STDOUT, csv (baseline)",
             lambda p: asyncio.run(raw_copy(postgres.url, p)), workdir / "raw.csv"),
            ("gpuworker ledger export --format csv",
             lambda p: cli(postgres.url, "csv", p), workdir / "cli.csv"),
            ("  in process, csv (info)",
             lambda p: asyncio.run(in_process(postgres.url, "csv", p)), workdir / "in.csv"),
            ("gpuworker ledger export --format jsonl",
             lambda p: cli(postgres.url, "jsonl", p), workdir / "cli.jsonl"),
            ("gpuworker ledger export --format parquet",
             lambda p: cli(postgres.url, "parquet", p), workdir / "cli.parquet"),
        ]  # fmt: skip
        for label, run, path in runs:
            seconds = run(path)
            size = path.stat().st_size
            results.append(
                (label, seconds, size, lines_in(path) if path.suffix != ".parquet" else 0)
            )
            print(f"[export] {label}: {seconds:.2f}s", flush=True)
    finally:
        postgres.stop()
        remove_workdir(workdir)
    raw_rate = rows / results[0][1]
    cli_rate = rows / results[1][1]
    print()
    print("=" * 100)
    print(f"BENCH export: {rows:,} postings to a file")
    print(f"  {machine_line()}")
    print(f"  {'':<44}{'seconds':>9}{'rows/s':>11}{'MB':>8}{'lines':>11}")
    for label, seconds, size, lines in results:
        print(f"  {label:<44}{seconds:>9.2f}{rows / seconds:>11,.0f}{size / 1e6:>8.1f}{lines:>11,}")
    ratio = cli_rate / raw_rate
    print(f"  ratio export/raw COPY rows/s (CSV): {ratio:.2f}x   goal >= {GOAL_RATIO}   ->"
          f" {verdict(ratio >= GOAL_RATIO)}")  # fmt: skip
    print(f"  export rows/s (CSV): {cli_rate:,.0f}   goal >= {GOAL_ROWS_PER_S:,}   ->"
          f" {verdict(cli_rate >= GOAL_ROWS_PER_S)}")  # fmt: skip
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
