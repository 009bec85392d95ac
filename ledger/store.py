"""The ledger's tables in PostgreSQL (projections/migrations/0007_ledger.sql).

Everything here runs inside the caller's transaction: what the ledger learns from one batch of
events, or from one accrual cycle, lands together with its checkpoint or not at all. Postings are
inserted with ON CONFLICT DO NOTHING on their derived ids, and only the ones really inserted move
balances and rollups: nothing can ever count twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from ledger.book import Posting, Progress
from ledger.money import SECONDS_PER_HOUR
from ledger.tracking import Tracked
from ledger.usage import Session

_encode = msgspec.json.Encoder().encode
_tracked = msgspec.json.Decoder(Tracked)
_progress = msgspec.json.Decoder(Progress)

# Storage meters count GB x seconds for the summaries' diskSpaceBilledGb.
STORAGE_METERS = frozenset({"instance.container_disk", "instance.volume_disk", "volume.storage"})
# Meters whose seconds are GPU time (the summaries' timeBilledMs).
GPU_METERS = frozenset({"instance.gpu", "serverless.worker"})

_POSTING_COLUMNS = (
    "id, at, user_id, debit, credit, amount_micros, kind, product, meter, resource_id,"
    " gpu_type_id, quantity, unit_price_micros, seconds, session_id, rate_card_version, reason"
)


def rate_per_hour(session: Session) -> int:
    return session.unit_price_micros * session.quantity * SECONDS_PER_HOUR // session.per_seconds


async def load_tracked(
    conn: psycopg.AsyncConnection[Any], keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Tracked]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    cur = await conn.execute(
        "SELECT doc::text FROM ledger_tracked WHERE (resource_type, resource_id) IN"
        " (SELECT * FROM unnest(%b::text[], %b::text[]))"
        " ORDER BY resource_type, resource_id FOR UPDATE",
        ([k[0] for k in wanted], [k[1] for k in wanted]),
    )
    found = [_tracked.decode(row[0]) for row in await cur.fetchall()]
    return {(t.resource_type, t.resource_id): t for t in found}


async def tracked_on_host(conn: psycopg.AsyncConnection[Any], host_id: str) -> list[Tracked]:
    cur = await conn.execute(
        "SELECT doc::text FROM ledger_tracked WHERE resource_type = 'instance' AND host_id = %s"
        " ORDER BY resource_id FOR UPDATE",
        (host_id,),
    )
    return [_tracked.decode(row[0]) for row in await cur.fetchall()]


async def load_progress(
    conn: psycopg.AsyncConnection[Any], session_ids: Iterable[str]
) -> dict[str, Progress]:
    wanted = sorted(set(session_ids))
    if not wanted:
        return {}
    cur = await conn.execute(
        "SELECT doc::text FROM ledger_progress WHERE session_id = ANY(%b)"
        " ORDER BY session_id FOR UPDATE",
        (wanted,),
    )
    found = [_progress.decode(row[0]) for row in await cur.fetchall()]
    return {p.session.id: p for p in found}


async def save_tracked(conn: psycopg.AsyncConnection[Any], tracked: Sequence[Tracked]) -> None:
    if not tracked:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO ledger_tracked (resource_type, resource_id, user_id, host_id, doc)"
            " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (resource_type, resource_id)"
            " DO UPDATE SET host_id = EXCLUDED.host_id, doc = EXCLUDED.doc",
            [
                (t.resource_type, t.resource_id, t.user_id, t.host_id, _encode(t).decode())
                for t in tracked
            ],
        )


async def open_sessions(
    conn: psycopg.AsyncConnection[Any], opened: Sequence[tuple[Session, int]]
) -> None:
    if not opened:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO ledger_sessions (id, user_id, resource_type, resource_id, product, meter,"
            " slot, tier, gpu_type_id, quantity, unit_price_micros, per_seconds,"
            " rate_card_version, started_at, opened_by_sequence)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            [
                (
                    s.id,
                    s.user_id,
                    s.resource_type,
                    s.resource_id,
                    s.product,
                    s.meter,
                    s.slot,
                    s.tier,
                    s.gpu_type_id,
                    s.quantity,
                    s.unit_price_micros,
                    s.per_seconds,
                    s.rate_card_version,
                    s.started_at,
                    sequence,
                )
                for s, sequence in opened
            ],
        )


async def end_sessions(
    conn: psycopg.AsyncConnection[Any], ended: Sequence[tuple[str, datetime, int, int]]
) -> None:
    """(session id, ended at, billed seconds, closing event's sequence)."""
    if not ended:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO ledger_session_ends (session_id, ended_at, billed_seconds,"
            " closed_by_sequence) VALUES (%s, %s, %s, %s) ON CONFLICT (session_id) DO NOTHING",
            list(ended),
        )


async def _copy_to_temp(
    cur: psycopg.AsyncCursor[Any],
    temp: str,
    like: str,
    columns: str,
    rows: Iterable[Sequence[Any]],
) -> None:
    """Rows into an empty session-local table shaped like `like` (one COPY, not a statement a row:
    an accrual cycle writes one row per open session)."""
    await cur.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)").format(
            sql.Identifier(temp), sql.Identifier(like)
        )
    )
    await cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(temp)))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(temp), sql.SQL(columns))
    async with cur.copy(copy_in) as copy:
        for row in rows:
            await copy.write_row(row)


_PROGRESS_COLUMNS = "session_id, user_id, resource_id, settled, rate_per_hour_micros, doc"


async def save_progress(conn: psycopg.AsyncConnection[Any], progress: Sequence[Progress]) -> None:
    if not progress:
        return
    encode = _encode
    async with conn.cursor() as cur:
        await _copy_to_temp(
            cur,
            "ledger_progress_incoming",
            "ledger_progress",
            _PROGRESS_COLUMNS,
            (
                (
                    p.session.id,
                    p.session.user_id,
                    p.session.resource_id,
                    p.settled,
                    rate_per_hour(p.session),
                    encode(p).decode(),
                )
                for p in progress
            ),
        )
        # In key order: concurrent writers never wait on each other in a cycle.
        await cur.execute(
            sql.SQL(
                "INSERT INTO ledger_progress ({columns}) SELECT {columns}"
                " FROM ledger_progress_incoming ORDER BY session_id"
                " ON CONFLICT (session_id) DO UPDATE SET settled = EXCLUDED.settled,"
                " doc = EXCLUDED.doc"
            ).format(columns=sql.SQL(_PROGRESS_COLUMNS))
        )


# From the postings just inserted (and only those): balances, then the hourly and daily rollups
# of usage (a credit is not usage), per resource and per GPU type. One statement: the rows never
# travel back to Python.
_ROLL_UP = """, {table} AS (
    INSERT INTO {table} (user_id, product, meter, resource_id, gpu_type_id, {column},
        amount_micros, seconds, gb_seconds)
    SELECT user_id, product, meter, resource_id, gpu_type_id, date_trunc('{column}', at, 'UTC'),
        sum(amount), sum(seconds), sum(gb_seconds)
    FROM used GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (user_id, product, meter, resource_id, gpu_type_id, {column}) DO UPDATE SET
        amount_micros = {table}.amount_micros + EXCLUDED.amount_micros,
        seconds = {table}.seconds + EXCLUDED.seconds,
        gb_seconds = {table}.gb_seconds + EXCLUDED.gb_seconds
)"""
_POST = """
WITH new AS (
    INSERT INTO ledger_postings ({columns}) SELECT {columns} FROM ledger_incoming
    ON CONFLICT (id) DO NOTHING
    RETURNING id, at, user_id, debit, credit, amount_micros, kind, product, meter, resource_id,
        gpu_type_id, quantity, seconds
), balances AS (
    INSERT INTO ledger_balances (account, balance_micros)
    SELECT account, sum(delta) FROM (
        SELECT debit AS account, -amount_micros AS delta FROM new
        UNION ALL SELECT credit, amount_micros FROM new
    ) moves
    GROUP BY account ORDER BY account
    ON CONFLICT (account) DO UPDATE
    SET balance_micros = ledger_balances.balance_micros + EXCLUDED.balance_micros
), used AS (
    SELECT user_id, product, meter, COALESCE(resource_id, '') AS resource_id,
        COALESCE(gpu_type_id, '') AS gpu_type_id, at,
        CASE WHEN kind = 'usage' THEN amount_micros ELSE -amount_micros END AS amount,
        seconds,
        CASE WHEN meter = ANY(%(storage)s) THEN seconds * quantity ELSE 0 END AS gb_seconds
    FROM new WHERE kind <> 'credit' AND product IS NOT NULL AND meter IS NOT NULL
){hourly}{daily}, gpu_daily AS (
    -- By GPU type, an instance's disks under its GPU's (the default summaries read only this).
    INSERT INTO ledger_daily_gpu (user_id, product, gpu_type_id, day, amount_micros,
        gpu_seconds, gb_seconds)
    SELECT u.user_id, u.product, COALESCE(NULLIF(u.gpu_type_id, ''), t.doc->>'gpu_type_id', ''),
        date_trunc('day', u.at, 'UTC'), sum(u.amount),
        sum(CASE WHEN u.meter = ANY(%(gpu_meters)s) THEN u.seconds ELSE 0 END),
        sum(u.gb_seconds)
    FROM used u LEFT JOIN ledger_tracked t ON u.product = 'instances.storage'
        AND t.resource_type = 'instance' AND t.resource_id = u.resource_id
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (user_id, product, gpu_type_id, day) DO UPDATE SET
        amount_micros = ledger_daily_gpu.amount_micros + EXCLUDED.amount_micros,
        gpu_seconds = ledger_daily_gpu.gpu_seconds + EXCLUDED.gpu_seconds,
        gb_seconds = ledger_daily_gpu.gb_seconds + EXCLUDED.gb_seconds
)
SELECT id FROM new
"""


async def incoming(cur: psycopg.AsyncCursor[Any]) -> None:
    """An empty `ledger_incoming`: postings staged for `post_incoming`."""
    await cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS ledger_incoming (LIKE ledger_postings INCLUDING DEFAULTS)"
    )
    await cur.execute("TRUNCATE ledger_incoming")


async def post_incoming(cur: psycopg.AsyncCursor[Any]) -> set[str]:
    """Post what `ledger_incoming` holds; returns the ids that were new."""
    # The rollups' GROUP BY over a cycle's rows sorts in memory rather than on disk.
    await cur.execute("SET LOCAL work_mem = '64MB'")
    await cur.execute(
        sql.SQL(_POST).format(
            columns=sql.SQL(_POSTING_COLUMNS),
            hourly=sql.SQL(_ROLL_UP.format(table="ledger_hourly", column="hour")),
            daily=sql.SQL(_ROLL_UP.format(table="ledger_daily", column="day")),
        ),
        {"storage": sorted(STORAGE_METERS), "gpu_meters": sorted(GPU_METERS)},
    )
    return {row[0] for row in await cur.fetchall()}


async def post(conn: psycopg.AsyncConnection[Any], postings: Sequence[Posting]) -> list[Posting]:
    """Insert postings; returns the ones that were new (and moves balances and rollups by them)."""
    if not postings:
        return []
    async with conn.cursor() as cur:
        await incoming(cur)
        copy_in = sql.SQL("COPY ledger_incoming ({}) FROM STDIN").format(sql.SQL(_POSTING_COLUMNS))
        async with cur.copy(copy_in) as copy:
            for p in postings:
                await copy.write_row(
                    (
                        p.id,
                        p.at,
                        p.user_id,
                        p.debit,
                        p.credit,
                        p.amount_micros,
                        p.kind,
                        p.product,
                        p.meter,
                        p.resource_id,
                        p.gpu_type_id,
                        p.quantity,
                        p.unit_price_micros,
                        p.seconds,
                        p.session_id,
                        p.rate_card_version,
                        p.reason,
                    )
                )
        inserted = await post_incoming(cur)
    return [p for p in postings if p.id in inserted]
