"""The projector role: one durable pull consumer per projection; batches apply exactly once.

Each batch's rows and checkpoint commit in one PostgreSQL transaction; events at or below the
checkpoint are skipped, so a redelivered batch (crash before ack) has no second effect. The ack
comes after the commit (AckPolicy.ALL: one ack per batch)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from events.catalog import decode_event
from events.subjects import STREAM
from projections import checkpoints
from projections.aggregate_table import AggregateTable

log = logging.getLogger("gpuworker.projector")

BATCH = 500
# After this many empty fetches in a row the consumer is checked and, if the server lost it or the
# subscription went deaf (the nats-py pull-after-restart pitfall), re-created.
IDLE_CHECK_EVERY = 5


def durable_name(projection: AggregateTable) -> str:
    return f"proj_{projection.name}"


class ProjectionRunner:
    def __init__(
        self,
        nc: NatsClient,
        pool: AsyncConnectionPool[Any],
        projections: list[AggregateTable],
        ack_wait_s: float = 30.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=5)
        self._pool = pool
        self._projections = projections
        self._ack_wait = ack_wait_s
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # Test hook: apply and commit but do not ack, as if the process died in between.
        self.crash_before_ack = False

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

    async def _subscribe(self, p: AggregateTable) -> Any:
        config = ConsumerConfig(
            durable_name=durable_name(p),
            filter_subject=p.filter_subject,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_ack_pending=20_000,
        )
        await self._js.add_consumer(STREAM, config)
        return await self._js.pull_subscribe_bind(durable=durable_name(p), stream=STREAM)

    async def _consume(self, p: AggregateTable) -> None:
        psub: Any = None
        idle = 0
        while not self._stopping.is_set():
            try:
                if psub is None:
                    psub = await self._subscribe(p)
                    idle = 0
                try:
                    msgs = await psub.fetch(BATCH, timeout=1.0)
                except TimeoutError:
                    idle += 1
                    if idle % IDLE_CHECK_EVERY == 0:
                        info = await psub.consumer_info()
                        if info.num_pending:
                            # Work is waiting but our fetches come back empty: deaf.
                            log.warning(
                                "projection %s: fetches idle with %d pending; re-subscribing",
                                p.name,
                                info.num_pending,
                            )
                            await self._drop(psub)
                            psub = None
                    continue
                if not msgs:
                    # nats-py's fetch can come back empty instead of timing out.
                    continue
                idle = 0
                await self._apply_until_committed(p, msgs)
                if self.crash_before_ack:
                    continue
                await msgs[-1].ack()
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("projection %s: %s; re-subscribing", p.name, exc or type(exc).__name__)
                await self._drop(psub)
                psub = None
                await asyncio.sleep(0.5)
            except Exception:
                # A projection that stops silently is the worst outcome: say why, keep going.
                log.exception("projection %s: unexpected error; retrying", p.name)
                await self._drop(psub)
                psub = None
                await asyncio.sleep(1.0)

    @staticmethod
    async def _drop(psub: Any) -> None:
        if psub is None:
            return
        try:
            await psub.unsubscribe()
        except Exception as exc:
            log.debug("unsubscribe failed: %s", exc)

    async def _apply_until_committed(self, p: AggregateTable, msgs: list[Msg]) -> None:
        # Never fetch past a batch that is not committed: with AckPolicy.ALL a later ack would
        # acknowledge it too.
        delay = 0.2
        while True:
            try:
                await self.apply_batch(p, msgs)
                return
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("projection %s: database error %s; retrying batch", p.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def apply_batch(self, p: AggregateTable, msgs: list[Msg]) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            last = await checkpoints.lock(conn, p.name)
            events = []
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > last:
                    events.append(decode_event(msg.data, seq))
            if events:
                await p.apply(conn, events)
                await checkpoints.advance(conn, p.name, events[-1].sequence)
            return len(events)
