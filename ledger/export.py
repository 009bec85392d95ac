"""Finance exports: postings as CSV, JSON Lines or Parquet, streamed in constant memory.

CSV and JSON Lines come straight out of PostgreSQL with `COPY … TO STDOUT` (the server formats
every row; nothing is held here but the chunk in flight), so an export runs at about the speed of
a raw COPY. Parquet is built from a server-side cursor in batches (pyarrow, the `export` extra).

Every format has the same columns, in posting time order (then id, so two exports of one range are
identical). `amount_micros` is always positive: `kind` says which way it went (usage charges the
customer; a reversal or a credit is money back to them), so the usage total of a range is
sum(usage) - sum(reversal), which is what the billing summaries add up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
# Litestar adds `; charset=utf-8` to text types itself.
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}

# (column, SQL expression over ledger_postings p): what every export holds, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("posting_id", "p.id"),
    ("time", "to_char(p.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"),
    ("user_id", "p.user_id"),
    ("debit_account", "p.debit"),
    ("credit_account", "p.credit"),
    ("kind", "p.kind"),
    ("product", "p.product"),
    ("resource_id", "p.resource_id"),
    ("meter", "p.meter"),
    ("gpu_type_id", "p.gpu_type_id"),
    ("quantity", "p.quantity"),
    ("unit_price_micros", "p.unit_price_micros"),
    ("seconds", "p.seconds"),
    ("amount_micros", "p.amount_micros"),
    ("session_id", "p.session_id"),
    ("rate_card_version", "p.rate_card_version"),
    ("reason", "p.reason"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
PARQUET_BATCH_ROWS = 65_536


class ExportRange(msgspec.Struct, frozen=True, kw_only=True):
    """Postings with `start <= at < end`, of one customer or of everyone."""

    start: datetime | None = None
    end: datetime | None = None
    user_id: str | None = None


def _where(export: ExportRange) -> sql.Composed:
    conditions: list[sql.Composable] = [sql.SQL("TRUE")]
    if export.user_id is not None:
        conditions.append(sql.SQL("p.user_id = {}").format(sql.Literal(export.user_id)))
    if export.start is not None:
        conditions.append(sql.SQL("p.at >= {}").format(sql.Literal(export.start)))
    if export.end is not None:
        conditions.append(sql.SQL("p.at < {}").format(sql.Literal(export.end)))
    return sql.SQL(" AND ").join(conditions)


def select(export: ExportRange, columns: sql.Composable | None = None) -> sql.Composed:
    """The export's rows, in order (the (at, id) and (user_id, at, id) indexes give it)."""
    listed = columns or sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.SQL(expr), sql.Identifier(name)) for name, expr in COLUMNS
    )
    return sql.SQL("SELECT {} FROM ledger_postings p WHERE {} ORDER BY p.at, p.id").format(
        listed, _where(export)
    )


def _json_object() -> sql.Composed:
    return sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(name), sql.SQL(expr)) for name, expr in COLUMNS
        )
    )


def copy_statement(fmt: Literal["csv", "jsonl"], export: ExportRange) -> sql.Composed:
    if fmt == "csv":
        return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(select(export))
    # One JSON object a line. COPY's text format would double every backslash; CSV with a quote
    # and a delimiter that JSON text never holds raw (PostgreSQL escapes control characters in
    # JSON strings) leaves each object exactly as PostgreSQL wrote it.
    return sql.SQL(
        "COPY ({}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    ).format(select(export, _json_object()))


async def count(conn: psycopg.AsyncConnection[Any], export: ExportRange) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(*) FROM ledger_postings p WHERE {}").format(_where(export))
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def stream_text(
    conn: psycopg.AsyncConnection[Any], fmt: Literal["csv", "jsonl"], export: ExportRange
) -> AsyncIterator[bytes]:
    """The export as chunks of bytes, one row each, straight from COPY (CSV: a header first)."""
    async with conn.cursor() as cur, cur.copy(copy_statement(fmt, export)) as copy:
        async for chunk in copy:
            yield bytes(chunk)


def _parquet_schema() -> Any:
    import pyarrow as pa

    text, whole = pa.string(), pa.int64()
    return pa.schema(
        [
            ("posting_id", text),
            ("time", pa.timestamp("us", tz="UTC")),
            ("user_id", text),
            ("debit_account", text),
            ("credit_account", text),
            ("kind", text),
            ("product", text),
            ("resource_id", text),
            ("meter", text),
            ("gpu_type_id", text),
            ("quantity", whole),
            ("unit_price_micros", whole),
            ("seconds", whole),
            ("amount_micros", whole),
            ("session_id", text),
            ("rate_card_version", text),
            ("reason", text),
        ]
    )


def parquet_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


async def write_parquet(
    conn: psycopg.AsyncConnection[Any],
    export: ExportRange,
    path: Path,
    on_rows: Callable[[int], None] = lambda _n: None,
) -> int:
    """The export as a Parquet file, a row group per batch from a server-side cursor. Needs a
    connection outside autocommit (the cursor lives in a transaction)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    # The time as a timestamp here (Parquet has the type), not the text of the other formats.
    columns = sql.SQL(", ").join(
        sql.SQL(expr if name != "time" else "p.at") for name, expr in COLUMNS
    )
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        async with conn.cursor(name="ledger_export") as cur:
            await cur.execute(select(export, columns))
            while rows := await cur.fetchmany(PARQUET_BATCH_ROWS):
                arrays = [
                    pa.array([row[i] for row in rows], type=field.type)
                    for i, field in enumerate(schema)
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                written += len(rows)
                on_rows(len(rows))
    return written
