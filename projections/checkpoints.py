"""Checkpoints: the last stream sequence each projection has applied, moved in the same transaction
as the read-model rows, and announced with NOTIFY (delivered only on commit)."""

from __future__ import annotations

from typing import Any

import psycopg

CHANNEL = "gpuworker_checkpoints"


async def ensure(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    await conn.execute(
        "INSERT INTO projection_checkpoints (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
    )


async def lock(conn: psycopg.AsyncConnection[Any], name: str) -> int:
    """Inside a transaction: the checkpoint, locked so one writer at a time moves it."""
    cur = await conn.execute(
        "SELECT last_sequence FROM projection_checkpoints WHERE name = %s FOR UPDATE", (name,)
    )
    row = await cur.fetchone()
    if row is None:
        await ensure(conn, name)
        return await lock(conn, name)
    return int(row[0])


async def advance(conn: psycopg.AsyncConnection[Any], name: str, sequence: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET last_sequence = %s WHERE name = %s", (sequence, name)
    )
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{name}:{sequence}"))


async def read_all(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT name, last_sequence FROM projection_checkpoints")
    return {name: int(seq) for name, seq in await cur.fetchall()}
