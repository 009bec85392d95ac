"""One LISTEN connection to PostgreSQL, kept open: connect, LISTEN, hand every notification to a
callback; on any failure log once, wait a moment and start again. PostgreSQL delivers a NOTIFY
only once its transaction commits, so a notified change is visible to every reader.

Used by the read-your-writes watcher (checkpoints) and by runsync's waits (finished jobs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

log = logging.getLogger("gpuworker.api")

RECONNECT_S = 0.5


async def listen_forever(
    conninfo: str,
    channel: str,
    on_note: Callable[[str], None],
    on_connected: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    on_lost: Callable[[], bool],
    what: str,
) -> None:
    """`on_connected` runs once LISTEN is in place (read what may have been missed before it);
    `on_lost` says whether the connection had been up (then its loss is logged)."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=3
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                await on_connected(conn)
                async for note in conn.notifies():
                    on_note(note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_lost():
                log.warning("%s lost PostgreSQL: %s", what, exc)
            await asyncio.sleep(RECONNECT_S)
