"""Job inputs, results and partial outputs in PostgreSQL, by job id and SHA-256: the events carry
only a `PayloadRef` (events/job.py says why).

A payload is written before the command that names it is sent, in its own short statement, so a
job is never appended without its input and a `run` answers only once both are durable. What a job
leaves here is deleted once its retention ends (services/processes/job_retention.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg_pool import AsyncConnectionPool

from events.job import PayloadRef

# All the partial outputs of one job together.
MAX_STREAM_BYTES = 64 * 1024 * 1024


def ref_of(body: bytes) -> PayloadRef:
    return PayloadRef(sha256=hashlib.sha256(body).hexdigest(), size=len(body))


async def put(pool: AsyncConnectionPool[Any], job_id: str, body: bytes) -> PayloadRef:
    ref = ref_of(body)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO job_payloads (job_id, sha256, body) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (job_id, ref.sha256, body),
        )
    return ref


async def get_many(
    pool: AsyncConnectionPool[Any], wanted: list[tuple[str, PayloadRef]]
) -> dict[tuple[str, str], bytes]:
    """The bodies of (job id, ref) pairs, by (job id, sha256); missing ones are left out."""
    if not wanted:
        return {}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT p.job_id, p.sha256, p.body FROM job_payloads p"
            " JOIN unnest(%s::text[], %s::text[]) AS w(job_id, sha256)"
            " ON p.job_id = w.job_id AND p.sha256 = w.sha256",
            ([job for job, _ in wanted], [ref.sha256 for _, ref in wanted]),
        )
        rows = await cur.fetchall()
    return {(row[0], row[1]): bytes(row[2]) for row in rows}


async def get(pool: AsyncConnectionPool[Any], job_id: str, ref: PayloadRef) -> bytes | None:
    return (await get_many(pool, [(job_id, ref)])).get((job_id, ref.sha256))


async def add_partial(pool: AsyncConnectionPool[Any], job_id: str, body: bytes) -> bool:
    """Keep a partial output; False (nothing kept) once the job's partials would pass
    MAX_STREAM_BYTES: a worker runs customer code, and its stream must not fill the database."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO job_stream (job_id, body) SELECT %(job)s, %(body)s"
            " WHERE (SELECT COALESCE(sum(length(body)), 0) FROM job_stream WHERE job_id = %(job)s)"
            " + %(size)s <= %(limit)s RETURNING position",
            {"job": job_id, "body": body, "size": len(body), "limit": MAX_STREAM_BYTES},
        )
        return await cur.fetchone() is not None


async def take_partials(pool: AsyncConnectionPool[Any], job_id: str) -> list[bytes]:
    """The partial outputs not handed out yet, oldest first; each is handed out once."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE job_stream SET delivered = true WHERE job_id = %s AND NOT delivered"
            " RETURNING position, body",
            (job_id,),
        )
        rows = await cur.fetchall()
    return [bytes(body) for _position, body in sorted(rows)]
