"""The dispatcher's memory of one endpoint's work and workers: who waits, what is queued, who holds
what, who was told to drop what. No I/O and no clock of its own (times are passed in), so the
dispatcher's rules about order and liveness are plain data operations.

Order: a job that lost its worker goes back to the head of its queue (it was first in line); a new
or retried job to the tail; normal jobs before low-priority ones. Entries are removed lazily: the
dispatcher checks a popped id against the job's state before taking it."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from services.worker_wire import Offer

# A stop notice is given again if the worker still lists the job this long after it was given.
STOP_AGAIN_AFTER_S = 5.0
# A stop notice is forgotten this long after it was made.
STOP_FORGET_AFTER_S = 120.0


@dataclass
class Waiter:
    """A worker's take request, waiting for jobs."""

    worker_id: str
    batch: int
    future: asyncio.Future[list[Offer]]
    # The event loop's time at which its request stops waiting.
    deadline: float
    # Jobs were popped for it and are being taken: its request waits for the outcome.
    assigning: bool = False
    expired: bool = False

    @property
    def open(self) -> bool:
        return not self.expired and not self.future.done()


@dataclass
class EndpointQueue:
    normal: deque[str] = field(default_factory=deque)
    low: deque[str] = field(default_factory=deque)
    queued: set[str] = field(default_factory=set)
    waiters: deque[Waiter] = field(default_factory=deque)

    def push(self, job_id: str, low_priority: bool, front: bool = False) -> None:
        if job_id in self.queued:
            return
        self.queued.add(job_id)
        line = self.low if low_priority else self.normal
        if front:
            line.appendleft(job_id)
        else:
            line.append(job_id)

    def pop(self) -> str | None:
        for line in (self.normal, self.low):
            while line:
                job_id = line.popleft()
                if job_id in self.queued:
                    self.queued.discard(job_id)
                    return job_id
        return None

    def discard(self, job_id: str) -> None:
        """No longer queued; its deque entry is skipped when reached."""
        self.queued.discard(job_id)

    def ids(self) -> list[str]:
        return [j for line in (self.normal, self.low) for j in line if j in self.queued]

    def next_waiter(self) -> Waiter | None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.open:
                return waiter
        return None


@dataclass
class WorkerView:
    """What the dispatcher knows of one worker: when it was last heard of, what it says it runs,
    which jobs it holds, and what it must be told to drop."""

    last_seen: float
    version: int | None = None
    listed: set[str] = field(default_factory=set)
    held: dict[str, float] = field(default_factory=dict)  # job id -> when taken
    misses: dict[str, int] = field(default_factory=dict)
    # job id -> (made at, given at or None)
    stops: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    stop_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    unhealthy: str | None = None
    # When it last held no job (its first sign of life, or its last job's end): the autoscaler
    # stops it once this is `idleTimeout` ago.
    idle_since: float = 0.0

    def __post_init__(self) -> None:
        self.idle_since = self.idle_since or self.last_seen

    def seen(self, now: float) -> None:
        self.last_seen = max(self.last_seen, now)

    def notice_stop(self, job_id: str, now: float) -> None:
        if job_id in self.stops:
            return
        self.stops[job_id] = (now, None)
        for waiter in self.stop_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.stop_waiters.clear()

    def due_stops(self, now: float) -> list[str]:
        """The jobs to tell it to drop now: new notices, and old ones it still runs."""
        due = []
        for job_id, (made, given) in list(self.stops.items()):
            if now - made > STOP_FORGET_AFTER_S:
                del self.stops[job_id]
            elif given is None or (job_id in self.listed and now - given > STOP_AGAIN_AFTER_S):
                self.stops[job_id] = (made, now)
                due.append(job_id)
        return due

    def missing(self, listed: set[str], now: float, grace_s: float) -> list[str]:
        """Jobs it holds but no longer lists in two pings in a row (taken `grace_s` or more
        before): it does not run them (a lost take answer, or a done call that failed)."""
        self.listed = listed
        gone = []
        for job_id, taken in self.held.items():
            if job_id in listed or now - taken < grace_s:
                self.misses.pop(job_id, None)
                continue
            self.misses[job_id] = self.misses.get(job_id, 0) + 1
            if self.misses[job_id] >= 2:
                gone.append(job_id)
        return gone

    def release(self, job_id: str, now: float) -> None:
        if self.held.pop(job_id, None) is not None and not self.held:
            self.idle_since = now
        self.misses.pop(job_id, None)
