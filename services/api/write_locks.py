"""Named locks that serialise a check and the write it admits, within this process and across api
processes: an asyncio lock per name, then a PostgreSQL advisory lock held on a connection of a
small pool of its own (one per name in use), so held locks never starve the api's main pool.

The write under the lock waits for its read model before it answers (read-your-writes), so the
next holder's check sees it. The bound on that wait (`read_your_writes_timeout_s`) is the one gap:
a projection lagging past it lets the next check run without the previous write."""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool


class WriteLocks:
    def __init__(self, database_url: str, max_at_once: int = 32) -> None:
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max_at_once,
            timeout=10.0,
            open=False,
            kwargs={"autocommit": True},
        )
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def held(self, name: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The lock `name` until the block ends, with the connection that holds it (for the
        block's reads)."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        async with lock, self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield conn
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @asynccontextmanager
    async def unlocked(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a check that accepts a bounded race."""
        async with self._pool.connection() as conn:
            yield conn
