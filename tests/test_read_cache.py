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


async def test_a_value_of_several_read_models_and_of_time_lives_until_any_moves(
    database_url: str, checkpoint_watcher: CheckpointWatcher
) -> None:
    """The instance list: instances, their hosts and the ledger's costs, at one second."""
    watcher = checkpoint_watcher
    cache = ReadCache[bytes](watcher, len)
    loads = 0
    models = ("instances", "hosts", "ledger")

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        return f"page-{loads}".encode()

    assert await cache.get_or_load(models, "u1", load, moment=100) == b"page-1"
    assert await cache.get_or_load(models, "u1", load, moment=100) == b"page-1"
    # The next second: costs to date have moved.
    assert await cache.get_or_load(models, "u1", load, moment=101) == b"page-2"
    assert await cache.get_or_load(models, "u1", load, moment=101) == b"page-2"
    # One commit in any one of them (here: the ledger's) makes the page old.
    async with (
        await psycopg.AsyncConnection.connect(database_url) as conn,
        conn.transaction(),
    ):
        await checkpoints.lock(conn, "ledger")
        await checkpoints.advance(conn, "ledger", 3)
    for _ in range(100):
        if watcher.seen("ledger") == 3:
            break
        await asyncio.sleep(0.05)
    assert await cache.get_or_load(models, "u1", load, moment=101) == b"page-3"
    assert cache.hits == 2


async def test_requests_that_miss_together_share_one_load(
    checkpoint_watcher: CheckpointWatcher,
) -> None:
    cache = ReadCache[bytes](checkpoint_watcher, len)
    loads = 0
    release = asyncio.Event()

    async def slow_load() -> bytes:
        nonlocal loads
        loads += 1
        await release.wait()
        return f"page-{loads}".encode()

    waiting = [
        asyncio.create_task(cache.get_or_load("instances", "u1", slow_load, moment=5))
        for _ in range(20)
    ]
    await asyncio.sleep(0.05)
    release.set()
    assert set(await asyncio.gather(*waiting)) == {b"page-1"}
    assert loads == 1

    # A failed load fails those that shared it, and the next request loads again.
    async def failing_load() -> bytes:
        await asyncio.sleep(0.01)
        raise RuntimeError("database down")

    failing = [
        asyncio.create_task(cache.get_or_load("instances", "u2", failing_load)) for _ in range(3)
    ]
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert await cache.get_or_load("instances", "u2", slow_load) == b"page-2"

    # The loading request cancelled: the others load for themselves instead of failing.
    release.clear()
    first = asyncio.create_task(cache.get_or_load("instances", "u3", slow_load))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get_or_load("instances", "u3", slow_load))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert await second == b"page-4"
