"""Checkpoints: the last stream sequence each projection has applied, moved in the same transaction
as the read-model rows, and announced with NOTIFY (delivered only on commit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
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


async def read(conn: psycopg.AsyncConnection[Any], name: str) -> int:
    cur = await conn.execute(
        "SELECT last_sequence FROM projection_checkpoints WHERE name = %s", (name,)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def advance(
    conn: psycopg.AsyncConnection[Any], name: str, sequence: int, pending: int | None = None
) -> None:
    """Inside the batch's transaction. Applying clears a halt: the event that stopped it is in."""
    await conn.execute(
        "UPDATE projection_checkpoints SET last_sequence = %s, pending = %s,"
        " reported_at = now(), halted = NULL WHERE name = %s",
        (sequence, pending, name),
    )
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{name}:{sequence}"))


async def report(conn: psycopg.AsyncConnection[Any], name: str, pending: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET pending = %s, reported_at = now() WHERE name = %s",
        (pending, name),
    )


async def halted(conn: psycopg.AsyncConnection[Any], name: str, error: str) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET halted = %s, reported_at = now() WHERE name = %s",
        (error[:2000], name),
    )


class Status(msgspec.Struct, frozen=True):
    last_sequence: int
    pending: int | None
    reported_at: datetime | None
    halted: str | None


async def statuses(conn: psycopg.AsyncConnection[Any]) -> dict[str, Status]:
    cur = await conn.execute(
        "SELECT name, last_sequence, pending, reported_at, halted FROM projection_checkpoints"
    )
    return {row[0]: Status(int(row[1]), row[2], row[3], row[4]) for row in await cur.fetchall()}


async def read_all(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT name, last_sequence FROM projection_checkpoints")
    return {name: int(seq) for name, seq in await cur.fetchall()}
