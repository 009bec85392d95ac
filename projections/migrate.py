"""Versioned schema migrations (projections/migrations/NNNN_name.sql), applied in order on start.

Each runs in its own transaction under an advisory lock, so replicas starting together apply each
migration once."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

log = logging.getLogger("gpuworker.migrate")

_LOCK_KEY = 0x67707577  # "gpuw"


def available() -> list[tuple[int, str, str]]:
    folder = resources.files("projections.migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conninfo: str) -> list[int]:
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        async with conn.transaction():
            # Under the lock too: two roles starting together (projector and ledger) would both
            # try to create it, and IF NOT EXISTS does not stop the second from failing.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for version, name, sql in available():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                )
                if await cur.fetchone():
                    continue
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied_now.append(version)
                log.info("applied migration %s", name)
    return applied_now
