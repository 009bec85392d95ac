"""Waiting for jobs to finish, for `runsync`: the jobs projection NOTIFYs each job that became final
(projections/jobs.py) once its row is committed, and one LISTEN connection per api process wakes
whoever waits for it. Nothing is polled; should the connection drop (a notice missed), a waiter
also reads the job again every second."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import psycopg

from projections.jobs import CHANNEL
from services.api.notifications import listen_forever

RECHECK_S = 1.0


class JobWaits:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-waits")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def notified(self, job_id: str, timeout: float) -> None:
        """Return when `job_id` is announced final, or after `timeout` (at most RECHECK_S):
        the caller reads the job again either way."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        try:
            await asyncio.wait_for(future, min(timeout, RECHECK_S))
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                future.set_result(None)

    async def _listen(self) -> None:
        await listen_forever(
            self._conninfo, CHANNEL, self._wake, self._on_connected, self._on_lost, "job waits"
        )

    async def _on_connected(self, _conn: psycopg.AsyncConnection[Any]) -> None:
        self.connected = True

    def _on_lost(self) -> bool:
        was, self.connected = self.connected, False
        return was
