"""Job inputs, results and partial outputs in PostgreSQL, by job id and SHA-256: the events carry
only a `PayloadRef` (events/job.py says why).

A payload is written before the command that names it is sent (in one short statement with the
others put at that moment: `JobPayloads`), so a job is never appended without its input and a
`run` answers only once both are durable. What a job leaves here is deleted once its retention
ends (services/processes/job_retention.py).

Each api process also keeps the small payloads it wrote or read in the last minute (`RecentBodies`),
because on the hot path a body is read moments after it was written, often by the same process: a
worker takes the input just sent with `run`, and `runsync` answers with the result its worker has
just posted. Keys are content addresses (job id and SHA-256), so a kept body can never be stale;
every write still goes to PostgreSQL first, so a body is never only here."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, NamedTuple

from psycopg_pool import AsyncConnectionPool

from events.job import PayloadRef

# All the partial outputs of one job together.
MAX_STREAM_BYTES = 64 * 1024 * 1024

Key = tuple[str, str]  # (job id, sha256)
# Statements writing payloads at once, per api process; and what one statement may hold.
WRITERS = 2
MAX_BATCH = 128
MAX_BATCH_BYTES = 4 * 1024 * 1024


def ref_of(body: bytes) -> PayloadRef:
    return PayloadRef(sha256=hashlib.sha256(body).hexdigest(), size=len(body))


class RecentBodies:
    """Bodies by content address for `ttl_s`, the oldest kept first out past `max_bytes`.
    Bodies above `max_body` are not kept: large ones are rare, and would push out many small."""

    def __init__(
        self,
        max_bytes: int = 32 * 1024 * 1024,
        max_body: int = 256 * 1024,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_bytes = max_bytes
        self._max_body = max_body
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, key: Key, body: bytes) -> None:
        self._drop(key)
        if len(body) > self._max_body:
            return
        now = self._clock()
        self._entries[key] = (now + self._ttl_s, body)
        self.bytes += len(body)
        while self._entries:
            oldest_key, (until, _body) = next(iter(self._entries.items()))
            if self.bytes <= self._max_bytes and until > now:
                break
            self._drop(oldest_key)

    def get(self, key: Key) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, body = entry
        if until <= self._clock():
            self._drop(key)
            return None
        self.hits += 1
        return body

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[1])


class _Queued(NamedTuple):
    job_id: str
    sha256: str
    body: bytes
    written: asyncio.Future[None]


class JobPayloads:
    """Puts are written in batches (group commit): while a write is in flight, the puts that
    come meanwhile queue, and the next statement writes them all. Under load that is one
    statement and one commit for many jobs instead of one each (each a round trip to PostgreSQL
    and a WAL flush); a put alone waits for nothing but its own write."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        recent: RecentBodies | None = None,
        writers: int = WRITERS,
    ) -> None:
        self.pool = pool
        self.recent = recent or RecentBodies()
        self._queue: deque[_Queued] = deque()
        self._max_writers = writers
        # Writers still able to take a batch. Counted down by the writer itself the moment it
        # finds the queue empty: its task lingers in `_tasks` until a done callback a turn of the
        # loop later, and a put made in between that counted it would wait for it forever.
        self._writing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0

    async def put(self, job_id: str, body: bytes) -> PayloadRef:
        ref = ref_of(body)
        written = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(job_id, ref.sha256, body, written))
        if self._writing < self._max_writers:
            self._writing += 1
            task = asyncio.create_task(self._write_queued(), name="job-payload-writer")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await written
        self.recent.keep((job_id, ref.sha256), body)
        return ref

    def _next_batch(self) -> list[_Queued]:
        batch: list[_Queued] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH and (not batch or size < MAX_BATCH_BYTES):
            queued = self._queue.popleft()
            if not queued.written.done():  # its request went away: nobody waits for it
                batch.append(queued)
                size += len(queued.body)
        return batch

    async def _write_queued(self) -> None:
        try:
            await self._write_batches()
        finally:
            self._writing -= 1

    async def _write_batches(self) -> None:
        while batch := self._next_batch():
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "INSERT INTO job_payloads (job_id, sha256, body)"
                        " SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[])"
                        " ON CONFLICT DO NOTHING",
                        (
                            [q.job_id for q in batch],
                            [q.sha256 for q in batch],
                            [q.body for q in batch],
                        ),
                    )
                self.statements += 1
            except Exception as exc:
                # Each put of the batch fails as its own write would have (503 for a database
                # that is down), and the next batch tries again.
                for queued in batch:
                    if not queued.written.done():
                        queued.written.set_exception(exc)
                continue
            except BaseException:
                for queued in batch:
                    if not queued.written.done():
                        queued.written.cancel()
                raise
            for queued in batch:
                if not queued.written.done():
                    queued.written.set_result(None)

    async def get_many(self, wanted: list[tuple[str, PayloadRef]]) -> dict[Key, bytes]:
        """The bodies of (job id, ref) pairs, by (job id, sha256); missing ones are left out."""
        found: dict[Key, bytes] = {}
        missing: list[Key] = []
        for job_id, ref in wanted:
            key = (job_id, ref.sha256)
            body = self.recent.get(key)
            if body is None:
                missing.append(key)
            else:
                found[key] = body
        if not missing:
            return found
        async with self.pool.connection() as conn:
            # A key probe each (LATERAL, LIMIT: never flattened into a join that a planner with
            # stale statistics could answer by scanning this fast-growing table).
            cur = await conn.execute(
                "SELECT w.job_id, w.sha256, p.body"
                " FROM unnest(%b::text[], %b::text[]) AS w(job_id, sha256)"
                " CROSS JOIN LATERAL (SELECT body FROM job_payloads"
                " WHERE job_id = w.job_id AND sha256 = w.sha256 LIMIT 1) AS p",
                ([job for job, _ in missing], [sha for _, sha in missing]),
            )
            rows = await cur.fetchall()
        for job_id, sha256, stored in rows:
            body = found[(job_id, sha256)] = bytes(stored)
            self.recent.keep((job_id, sha256), body)
        return found

    async def get(self, job_id: str, ref: PayloadRef) -> bytes | None:
        return (await self.get_many([(job_id, ref)])).get((job_id, ref.sha256))

    async def add_partial(self, job_id: str, body: bytes) -> bool:
        """Keep a partial output; False (nothing kept) once the job's partials would pass
        MAX_STREAM_BYTES: a worker runs customer code, and its stream must not fill the
        database."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO job_stream (job_id, body) SELECT %(job)s, %(body)s"
                " WHERE (SELECT COALESCE(sum(length(body)), 0) FROM job_stream"
                " WHERE job_id = %(job)s) + %(size)s <= %(limit)s RETURNING position",
                {"job": job_id, "body": body, "size": len(body), "limit": MAX_STREAM_BYTES},
            )
            return await cur.fetchone() is not None

    async def take_partials(self, job_id: str) -> list[bytes]:
        """The partial outputs not handed out yet, oldest first; each is handed out once."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE job_stream SET delivered = true WHERE job_id = %s AND NOT delivered"
                " RETURNING position, body",
                (job_id,),
            )
            rows = await cur.fetchall()
        return [bytes(body) for _position, body in sorted(rows)]
