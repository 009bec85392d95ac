"""The projector role: each projection reads its events in stream order and applies them once.

The PostgreSQL checkpoint (last stream sequence applied) is the only cursor. On every start and
after any trouble, a projection reads its checkpoint and consumes from the next sequence with an
ack-less ordered pull (`projections.ordered_pull`). Each batch's rows and the checkpoint commit in
one transaction, under the checkpoint row's lock: a replica that finds the checkpoint already past
some of its events leaves those to the one that applied them, and nothing below the checkpoint was
ever skipped, because everything is applied in order. An event that cannot be applied halts its
projection loudly (logged, recorded on its checkpoint row, shown by /health) and is retried, never
stepped over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from events.catalog import decode_event
from events.delivery import stream_sequence
from events.envelope import Envelope
from projections import checkpoints
from projections.ordered_pull import Gap, OrderedPull
from services.role_metrics import PROJECTOR_PENDING, PROJECTOR_POSITION

log = logging.getLogger("gpuworker.projector")

BATCH = 500
# How long a halted projection waits before it tries the event that stopped it again.
HALT_RETRY_S = 5.0
# How often an idle projection reports that it is alive and how far behind it is.
STATUS_EVERY_S = 5.0


class Projection(Protocol):
    """Anything built from the stream with exactly-once effects: a read model
    (`projections.aggregate_table.AggregateTable`) or the billing ledger."""

    @property
    def name(self) -> str: ...

    @property
    def filter_subjects(self) -> list[str]: ...

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        """Inside the batch's transaction."""
        ...


def _pipelined(p: Projection) -> bool:
    """Whether `p.apply` may run in psycopg's pipeline mode: statements sent without waiting for
    each answer (no COPY, which the ledger uses). A projection says so with `pipelined = True`."""
    return bool(getattr(p, "pipelined", False))


def _linger_s(p: Projection) -> float:
    """How long `p` lets a batch gather after its first event (`linger_s`, default 0: at once).
    A projection nobody waits on trades that delay for batches many times larger: each batch's
    fixed cost (a pooled connection, the checkpoint's lock and advance, the commit) then falls
    on many events instead of a few."""
    return float(getattr(p, "linger_s", 0.0))


class CheckpointMoved(Exception):
    """The checkpoint is behind what this reader handled (a rebuild reset it): start again."""


# What PostgreSQL answers about the rows an event makes, not about itself (a value it cannot
# hold, a broken constraint, a statement it cannot run): retrying changes nothing, so the event
# halts the projection loudly (/health), never loops as "database unavailable".
EVENT_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)


class Unappliable(Exception):
    """This event cannot be decoded or folded: the projection stops before it."""

    def __init__(self, sequence: int, cause: Exception) -> None:
        super().__init__(f"event {sequence}: {type(cause).__name__}: {cause}")
        self.sequence = sequence


async def _apply_prefix(
    conn: psycopg.AsyncConnection[Any], p: Projection, msgs: list[Msg]
) -> tuple[list[Envelope], Unappliable | None]:
    """Apply as many of `msgs`, in order, as can be applied (inside the caller's transaction).
    Database errors propagate; anything else stops at the event that caused it."""
    events: list[Envelope] = []
    failure: Unappliable | None = None
    for m in msgs:
        try:
            events.append(decode_event(m.data, stream_sequence(m)))
        except Exception as exc:
            failure = Unappliable(stream_sequence(m), exc)
            break
    if not events:
        return events, failure
    try:
        async with conn.transaction():  # a savepoint: the whole batch in one go, usually
            await p.apply(conn, events)
        return events, failure
    except psycopg.Error as exc:
        if not isinstance(exc, EVENT_ERRORS):
            raise
        log.warning("projection %s: a batch failed (%s); applying it event by event", p.name, exc)
    except Exception as exc:
        log.warning("projection %s: a batch failed (%s); applying it event by event", p.name, exc)
    done: list[Envelope] = []
    for event in events:  # find the one that fails; keep everything before it
        try:
            async with conn.transaction():
                await p.apply(conn, [event])
        except psycopg.Error as exc:
            if not isinstance(exc, EVENT_ERRORS):
                raise
            return done, Unappliable(event.sequence, exc)
        except Exception as exc:
            return done, Unappliable(event.sequence, exc)
        done.append(event)
    return done, failure


class ProjectionRunner:
    def __init__(
        self, nc: NatsClient, pool: AsyncConnectionPool[Any], projections: Sequence[Projection]
    ) -> None:
        self._nc = nc
        self._pool = pool
        self._projections = projections
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # Test hook: a batch is applied and committed, then the reader "dies" (its pull is dropped
        # and it starts again from the checkpoint), as a crash right after the commit would.
        self.crash_after_commit = False

    async def start(self) -> None:
        async with self._pool.connection() as conn:
            for p in self._projections:
                await checkpoints.ensure(conn, p.name)
        for p in self._projections:
            self._tasks.append(asyncio.create_task(self._consume(p), name=f"projector:{p.name}"))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _consume(self, p: Projection) -> None:
        while not self._stopping.is_set():
            pull: OrderedPull | None = None
            try:
                position = await self._read_checkpoint(p)
                pull = OrderedPull(self._nc, p.filter_subjects, position + 1, batch=BATCH)
                await pull.open()
                await self._follow(p, pull, position)
            except asyncio.CancelledError:
                raise
            except (Gap, CheckpointMoved) as exc:
                log.info("projection %s: %s; resuming from its checkpoint", p.name, exc)
                await asyncio.sleep(0.2)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                log.warning("projection %s: %s; resuming from its checkpoint", p.name, reason)
                await asyncio.sleep(0.5)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("projection %s: database unavailable (%s); retrying", p.name, exc)
                await asyncio.sleep(1.0)
            except Exception as exc:
                # Never skip an event: stop here, say so everywhere, and try again later.
                log.exception("projection %s HALTED: %s", p.name, exc)
                await self._record_halt(p, str(exc) or type(exc).__name__)
                await asyncio.sleep(HALT_RETRY_S)
            finally:
                if pull is not None:
                    await pull.close()

    async def _follow(self, p: Projection, pull: OrderedPull, position: int) -> None:
        loop = asyncio.get_running_loop()
        reported = 0.0
        while not self._stopping.is_set():
            msgs = await pull.next(timeout=1.0)
            if msgs and len(msgs) < BATCH and (linger := _linger_s(p)):
                await asyncio.sleep(linger)
                msgs += await pull.next(timeout=0)
            if msgs:
                position = await self.apply_batch(p, msgs, position, pull.pending)
                if self.crash_after_commit:
                    raise Gap("test hook: crashed after a commit")
            elif loop.time() - reported > STATUS_EVERY_S:
                await self._report(p, pull.pending)
                reported = loop.time()

    async def _read_checkpoint(self, p: Projection) -> int:
        async with self._pool.connection() as conn:
            return await checkpoints.read(conn, p.name)

    async def apply_batch(
        self, p: Projection, msgs: list[Msg], position: int, pending: int = 0
    ) -> int:
        """Apply the events after the checkpoint; returns this reader's new position.

        `msgs` continue this reader's ordered stream right after `position`. If one of them cannot
        be applied, everything before it is committed and `Unappliable` is raised."""
        if _pipelined(p):
            try:
                return await self._apply_pipelined(p, msgs, position, pending)
            except CheckpointMoved:
                raise
            except Exception as exc:
                # The database being unavailable is no fault of the batch's events.
                if isinstance(exc, psycopg.Error) and not isinstance(exc, EVENT_ERRORS):
                    raise
                log.info(
                    "projection %s: a batch failed (%s); applying it again in steps", p.name, exc
                )
        async with self._pool.connection() as conn:
            async with conn.transaction():
                last = await checkpoints.lock(conn, p.name)
                if last < position:
                    raise CheckpointMoved(f"checkpoint {last} is behind this reader's {position}")
                fresh = [m for m in msgs if stream_sequence(m) > last]
                applied, failure = await _apply_prefix(conn, p, fresh)
                if applied:
                    await checkpoints.advance(conn, p.name, applied[-1].sequence, pending)
            if applied:
                PROJECTOR_POSITION.labels(p.name).set(applied[-1].sequence)
            PROJECTOR_PENDING.labels(p.name).set(pending)
            if failure is not None:
                raise failure
        return stream_sequence(msgs[-1])

    async def _apply_pipelined(
        self, p: Projection, msgs: list[Msg], position: int, pending: int
    ) -> int:
        """The usual case, in three round trips to PostgreSQL instead of about ten: the
        checkpoint's lock, whatever the projection must read, then its writes, the checkpoint and
        the commit sent together. No savepoint: if anything fails, the whole batch is rolled back
        and `apply_batch` applies it again the careful way, which finds the event to blame."""
        events = [decode_event(m.data, stream_sequence(m)) for m in msgs]
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            last = await checkpoints.lock(conn, p.name)
            if last < position:
                raise CheckpointMoved(f"checkpoint {last} is behind this reader's {position}")
            fresh = [e for e in events if e.sequence > last]
            if fresh:
                await p.apply(conn, fresh)
                await checkpoints.advance(conn, p.name, fresh[-1].sequence, pending)
        if fresh:
            PROJECTOR_POSITION.labels(p.name).set(fresh[-1].sequence)
        PROJECTOR_PENDING.labels(p.name).set(pending)
        return stream_sequence(msgs[-1])

    async def _report(self, p: Projection, pending: int) -> None:
        PROJECTOR_PENDING.labels(p.name).set(pending)
        try:
            async with self._pool.connection() as conn:
                await checkpoints.report(conn, p.name, pending)
        except (psycopg.Error, PoolTimeout) as exc:
            log.debug("projection %s: status not recorded: %s", p.name, exc)

    async def _record_halt(self, p: Projection, error: str) -> None:
        try:
            async with self._pool.connection() as conn:
                await checkpoints.halted(conn, p.name, error)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("projection %s: halt not recorded: %s", p.name, exc)
