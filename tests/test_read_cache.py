"""The list cache serves a stamped body only while its projection's checkpoint has not moved."""

from __future__ import annotations

import asyncio

import psycopg

from projections import checkpoints
from services.api.consistency import CheckpointWatcher
from services.api.read_cache import ReadCache


async def test_entries_live_until_the_checkpoint_moves(
    database_url: str, checkpoint_watcher: CheckpointWatcher
) -> None:
    watcher = checkpoint_watcher
    cache = ReadCache[bytes](watcher, len)
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        return f"body-{loads}".encode()

    assert await cache.get_or_load("templates", "u1", load) == b"body-1"
    assert await cache.get_or_load("templates", "u1", load) == b"body-1"
    assert await cache.get_or_load("templates", "u2", load) == b"body-2"
    assert cache.hits == 1

    # A projector commit anywhere in the projection makes every entry old.
    async with (
        await psycopg.AsyncConnection.connect(database_url) as conn,
        conn.transaction(),
    ):
        await checkpoints.lock(conn, "templates")
        await checkpoints.advance(conn, "templates", 7)
    for _ in range(100):
        if watcher.seen("templates") == 7:
            break
        await asyncio.sleep(0.05)
    assert await cache.get_or_load("templates", "u1", load) == b"body-3"

    # Without its LISTEN connection the watcher cannot see commits: no cache at all.
    watcher.connected = False
    assert await cache.get_or_load("templates", "u1", load) == b"body-4"
    assert await cache.get_or_load("templates", "u1", load) == b"body-5"
