"""Waiting for jobs to finish, for `runsync`: the jobs projection NOTIFYs each job that became final
(projections/jobs.py) once its row is committed, and one LISTEN connection per api process wakes
whoever waits for it. Nothing is polled; should the connection drop (a notice missed), a waiter
also reads the job again every second.

The notice carries the final state (projections/jobs.py), and the waiter answers with it instead
of reading the row back; a notice with only the job's id (a state too large for a payload) makes
the waiter read the row. When the job's result came in through this very process (its worker's
done call), the done handler also hands the final state over once the read model shows it
(`settle`)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import msgspec
import psycopg

from projections.jobs import CHANNEL
from services.api.notifications import listen_forever
from services.deciders.job import JobState

log = logging.getLogger("gpuworker.api")

RECHECK_S = 1.0


class _Named(msgspec.Struct):
    id: str


class JobWatch:
    """One waiter's watch on one job, begun before the job was submitted: a job that becomes
    final while its submit is still being answered is not missed."""

    def __init__(self) -> None:
        self._final = asyncio.Event()
        # The job's final state, when this process already has it (see `JobWaits.settle`).
        self.settled: JobState | None = None

    def announce(self, settled: JobState | None = None) -> None:
        self.settled = self.settled or settled
        self._final.set()

    async def wait(self, timeout: float) -> None:
        """Return once the job was announced final since the last wait, or after `timeout` (at
        most RECHECK_S): the caller reads the job again either way."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._final.wait(), min(timeout, RECHECK_S))
        self._final.clear()


class JobWaits:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._watches: dict[str, set[JobWatch]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-waits")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @contextmanager
    def watching(self, job_id: str) -> Iterator[JobWatch]:
        """A watch on `job_id` from now on: begin it before the job can become final."""
        watch = JobWatch()
        self._watches[job_id].add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[job_id]

    def _wake(self, note: str) -> None:
        if not note.startswith("{"):
            for watch in self._watches.get(note, ()):
                watch.announce()
            return
        try:
            state = msgspec.json.decode(note, type=JobState)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A state this process cannot read (a projector of another version): the waiters of
            # the job it names read the row; if it names none, they read it within RECHECK_S.
            log.warning("job notice not understood (%s); the row will be read", exc)
            with suppress(msgspec.DecodeError, msgspec.ValidationError):
                self._wake(msgspec.json.decode(note, type=_Named).id)
            return
        self.settle(state)

    def settle(self, state: JobState) -> None:
        """`state` is final and visible in the jobs read model: its waiters need not read it."""
        for watch in self._watches.get(state.id, ()):
            watch.announce(state)

    async def _listen(self) -> None:
        await listen_forever(
            self._conninfo, CHANNEL, self._wake, self._on_connected, self._on_lost, "job waits"
        )

    async def _on_connected(self, _conn: psycopg.AsyncConnection[Any]) -> None:
        self.connected = True

    def _on_lost(self) -> bool:
        was, self.connected = self.connected, False
        return was
