"""An accrual cycle: every open session is charged for its whole seconds so far, in one
transaction. Run at least every minute (GPUWORKER_ACCRUAL_INTERVAL), so a running instance's cost
reaches the customer's balance within a minute, and spend control acts on it.

A cycle touches every open session, a hundred thousand of them on a busy cloud, so it runs inside
PostgreSQL as set operations: no session travels to this process and back. The arithmetic is
`ledger.book.accrue`'s, which stays the reference (tests run both on the same sessions): whole
seconds since the session started, floor(unit price x quantity x seconds / per_seconds) owed,
less what was posted, posted with the id `ledger.book.accrual_id` gives it.

Writers of the ledger (event batches of every ledger replica, accrual cycles) take one
transaction-level advisory lock, so a cycle never charges a session that a batch is settling."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from ledger import store

# Held by whoever writes postings, until their transaction ends.
WRITER_LOCK = 0x6C656467  # "ledg"

_STAGE = """
WITH open_sessions AS (
    SELECT session_id, doc->'session' AS s,
        (doc->>'posted_micros')::bigint AS posted,
        (doc->>'billed_seconds')::bigint AS billed
    FROM ledger_progress WHERE NOT settled
), due AS (
    SELECT session_id, s, posted, billed,
        (s->>'started_at')::timestamptz AS started_at,
        floor(extract(epoch FROM %(now)s - (s->>'started_at')::timestamptz))::bigint AS seconds
    FROM open_sessions
), charged AS (
    SELECT *, (s->>'unit_price_micros')::bigint * (s->>'quantity')::bigint * seconds
        / (s->>'per_seconds')::bigint - posted AS amount
    FROM due WHERE seconds > billed
), progressed AS (
    UPDATE ledger_progress p
    SET doc = jsonb_set(jsonb_set(p.doc, '{posted_micros}', to_jsonb(c.posted + c.amount)),
        '{billed_seconds}', to_jsonb(c.seconds))
    FROM charged c WHERE p.session_id = c.session_id
)
INSERT INTO ledger_incoming (id, at, user_id, debit, credit, amount_micros, kind, product, meter,
    resource_id, gpu_type_id, quantity, unit_price_micros, seconds, session_id,
    rate_card_version)
SELECT md5('posting' || chr(31) || session_id || chr(31) || 'accrual:' || seconds)::uuid::text,
    started_at + seconds * interval '1 second', s->>'user_id', 'customer:' || (s->>'user_id'),
    'revenue:' || (s->>'product'), amount, 'usage', s->>'product', s->>'meter',
    s->>'resource_id', s->>'gpu_type_id', (s->>'quantity')::integer,
    (s->>'unit_price_micros')::bigint, seconds - billed, session_id, s->>'rate_card_version'
FROM charged WHERE amount > 0
"""


async def lock_writers(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))


async def accrue_open_sessions(conn: psycopg.AsyncConnection[Any], now: datetime) -> int:
    """Inside the caller's transaction; returns how many postings were made."""
    await lock_writers(conn)
    async with conn.cursor() as cur:
        await store.incoming(cur)
        await cur.execute(_STAGE, {"now": now})
        return len(await store.post_incoming(cur))
