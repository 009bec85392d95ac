"""Job inputs, results and partial outputs in PostgreSQL, by job id and SHA-256: the events carry
only a `PayloadRef` (events/job.py says why).

A payload is written before the command that names it is sent, in its own short statement, so a
job is never appended without its input and a `run` answers only once both are durable. What a job
leaves here is deleted once its retention ends (services/processes/job_retention.py).

Each api process also keeps the small payloads it wrote or read in the last minute (`RecentBodies`),
because on the hot path a body is read moments after it was written, often by the same process: a
worker takes the input just sent with `run`, and `runsync` answers with the result its worker has
just posted. Keys are content addresses (job id and SHA-256), so a kept body can never be stale;
every write still goes to PostgreSQL first, so a body is never only here."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from events.job import PayloadRef

# All the partial outputs of one job together.
MAX_STREAM_BYTES = 64 * 1024 * 1024

Key = tuple[str, str]  # (job id, sha256)


def ref_of(body: bytes) -> PayloadRef:
    return PayloadRef(sha256=hashlib.sha256(body).hexdigest(), size=len(body))


class RecentBodies:
    """Bodies by content address for `ttl_s`, least recently used first out past `max_bytes`.
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
        self._entries[key] = (self._clock() + self._ttl_s, body)
        self.bytes += len(body)
        now = self._clock()
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


class JobPayloads:
    def __init__(self, pool: AsyncConnectionPool[Any], recent: RecentBodies | None = None) -> None:
        self.pool = pool
        self.recent = recent or RecentBodies()

    async def put(self, job_id: str, body: bytes) -> PayloadRef:
        ref = ref_of(body)
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO job_payloads (job_id, sha256, body) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (job_id, ref.sha256, body),
            )
        self.recent.keep((job_id, ref.sha256), body)
        return ref

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
            cur = await conn.execute(
                "SELECT p.job_id, p.sha256, p.body FROM job_payloads p"
                " JOIN unnest(%s::text[], %s::text[]) AS w(job_id, sha256)"
                " ON p.job_id = w.job_id AND p.sha256 = w.sha256",
                ([job for job, _ in missing], [sha for _, sha in missing]),
            )
            rows = await cur.fetchall()
        for job_id, sha256, body in rows:
            found[(job_id, sha256)] = bytes(body)
            self.recent.keep((job_id, sha256), bytes(body))
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
