"""Operator commands on the ledger: `gpuworker ledger verify`, `gpuworker ledger export`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from events.catalog import decode_event
from events.delivery import stream_sequence
from ledger.consumer import CHECKPOINT, SUBJECTS
from ledger.export import (
    ExportRange,
    Format,
    count,
    parquet_available,
    stream_text,
    write_parquet,
)
from ledger.summaries import SummaryError, parse_time
from ledger.verify import Replayed, check_replay, check_tables
from projections import checkpoints
from projections.ordered_pull import OrderedPull
from services.cli.operator import user_id_by_email
from services.config import Settings
from services.nats_connection import connect_role
from services.nats_permissions import OPERATOR_USER


async def replay(settings: Settings, upto: int) -> Replayed:
    """What the stream implies, from sequence 1 to the ledger's checkpoint (what it has read)."""
    replayed = Replayed()
    if upto == 0:
        return replayed
    nc = await connect_role(settings, OPERATOR_USER, "ledger-verify")
    pull = OrderedPull(nc, list(SUBJECTS), 1, batch=5000)
    try:
        await pull.open()
        while True:
            msgs = await pull.next(timeout=5.0)
            events = [decode_event(m.data, stream_sequence(m)) for m in msgs]
            replayed.apply(e for e in events if e.sequence <= upto)
            if not msgs or events[-1].sequence >= upto or pull.pending == 0:
                return replayed
    finally:
        await pull.close()
        await nc.close()


async def verify(settings: Settings) -> int:
    connection = await psycopg.AsyncConnection.connect(settings.database_url)
    async with connection as conn, conn.transaction():
        # One consistent view of the tables, while the ledger keeps writing.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        upto = await checkpoints.read(conn, CHECKPOINT)
        problems = await check_tables(conn)
        replayed = await replay(settings, upto)
        problems += await check_replay(conn, replayed)
    for problem in problems:
        print(f"BROKEN: {problem}")
    print(
        f"ledger verify: {len(problems)} problem(s); {len(replayed.sessions)} sessions replayed"
        f" to sequence {upto}"
    )
    return 1 if problems else 0


def _progress(total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A progress bar on standard error when it is a terminal (never in a pipe or a log)."""
    if not sys.stderr.isatty():
        return (lambda _n: None), (lambda: None)
    bar = Progress(
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("postings"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )
    task = bar.add_task("export", total=total)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop


async def export(
    settings: Settings,
    fmt: Format,
    start: str | None,
    end: str | None,
    email: str | None,
    output: Path | None,
) -> int:
    """`gpuworker ledger export`: postings for finance, streamed (constant memory)."""
    try:
        export_range = ExportRange(
            start=parse_time("--from", start) if start else None,
            end=parse_time("--to", end) if end else None,
        )
    except SummaryError as exc:
        print(f"gpuworker: {str(exc).replace('query parameter ', '')}", file=sys.stderr)
        return 2
    if fmt == "parquet" and output is None:
        print("gpuworker: --format parquet needs --output FILE", file=sys.stderr)
        return 2
    if fmt == "parquet" and not parquet_available():
        print("gpuworker: Parquet needs pyarrow: pip install 'gpuworker[export]'", file=sys.stderr)
        return 2
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        if email is not None:
            user_id = await user_id_by_email(conn, email)
            if user_id is None:
                print(f"gpuworker: no account with email {email!r}", file=sys.stderr)
                return 1
            export_range = msgspec.structs.replace(export_range, user_id=user_id)
        # One snapshot for the count and the rows, while the ledger keeps posting.
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            total = await count(conn, export_range) if sys.stderr.isatty() else 0
            advance, done = _progress(total)
            try:
                if fmt == "parquet":
                    assert output is not None
                    rows = await write_parquet(conn, export_range, output, advance)
                else:
                    rows = await _write_text(conn, fmt, export_range, output, advance)
            finally:
                done()
    where = output or "standard output"
    print(f"exported {rows} posting(s) as {fmt} to {where}", file=sys.stderr)
    return 0


async def _write_text(
    conn: psycopg.AsyncConnection[Any],
    fmt: Literal["csv", "jsonl"],
    export_range: ExportRange,
    output: Path | None,
    advance: Callable[[int], None],
) -> int:
    # CSV's first line is its header, not a posting.
    rows = -1 if fmt == "csv" else 0
    with ExitStack() as stack:
        sink: BinaryIO = stack.enter_context(output.open("wb")) if output else sys.stdout.buffer
        async for chunk in stream_text(conn, fmt, export_range):
            sink.write(chunk)
            rows += 1
            if rows > 0 and rows % 1000 == 0:
                advance(1000)
        advance(max(rows, 0) % 1000)
    return max(rows, 0)
