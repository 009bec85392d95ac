"""Read-your-writes: wait (bounded) until a projection's checkpoint reaches a write's sequence.

Checkpoints arrive by LISTEN/NOTIFY, which PostgreSQL delivers only after the projector's
transaction commits, so "notified" means "visible to every reader"."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import psycopg

from projections import checkpoints
from services.api.notifications import listen_forever


class CheckpointWatcher:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._seen: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def seen(self, name: str) -> int:
        return self._seen[name]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="checkpoint-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self, name: str, sequence: int, timeout: float) -> bool:
        if self._seen[name] >= sequence:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sequence, future)
        self._waiters[name].append(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return self._seen[name] >= sequence
        finally:
            if entry in self._waiters[name]:
                self._waiters[name].remove(entry)

    def _advance(self, name: str, sequence: int) -> None:
        if sequence <= self._seen[name]:
            return
        self._seen[name] = sequence
        still: list[tuple[int, asyncio.Future[None]]] = []
        for wanted, future in self._waiters[name]:
            if wanted <= sequence:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        self._waiters[name] = still

    async def _listen(self) -> None:
        await listen_forever(
            self._conninfo,
            checkpoints.CHANNEL,
            self._on_note,
            self._on_connected,
            self._on_lost,
            "checkpoint watcher",
        )

    async def _on_connected(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Read after LISTEN: nothing committed in between can be missed.
        for name, seq in (await checkpoints.read_all(conn)).items():
            self._advance(name, seq)
        self.connected = True

    def _on_note(self, payload: str) -> None:
        name, _, sequence = payload.rpartition(":")
        self._advance(name, int(sequence))

    def _on_lost(self) -> bool:
        was, self.connected = self.connected, False
        return was
