"""Read-your-writes: wait (bounded) until a projection's checkpoint reaches a write's sequence.

Checkpoints arrive by LISTEN/NOTIFY, which PostgreSQL delivers only after the projector's
transaction commits, so "notified" means "visible to every reader"."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import psycopg

from projections import checkpoints

log = logging.getLogger("gpuworker.api")


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
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=3
                ) as conn:
                    await conn.execute(f"LISTEN {checkpoints.CHANNEL}")
                    # Read after LISTEN: nothing committed in between can be missed.
                    for name, seq in (await checkpoints.read_all(conn)).items():
                        self._advance(name, seq)
                    self.connected = True
                    async for note in conn.notifies():
                        name, _, sequence = note.payload.rpartition(":")
                        self._advance(name, int(sequence))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("checkpoint watcher lost PostgreSQL: %s", exc)
                self.connected = False
                await asyncio.sleep(0.5)
