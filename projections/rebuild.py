"""Drop a projection's rows and replay its events from stream sequence 1.

The rebuild holds the checkpoint row's lock for its whole transaction, so a live projector waits and
then skips what the rebuild already applied: rebuilding is safe while everything runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections import deque
from typing import Any

import psycopg
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg import sql

from events.catalog import decode_event
from events.delivery import pending, stream_sequence
from events.ids import new_id
from events.subjects import STREAM
from projections import checkpoints
from projections.aggregate_table import AggregateTable

log = logging.getLogger("gpuworker.rebuild")

BATCH = 5000
REQUEST_TIMEOUT_S = 10.0


class _RawPull:
    """Pull batches from an ack-less consumer with raw pull requests into a plain callback.

    nats-py's `fetch` awaits each message through `asyncio.wait_for` (a Task per message); at
    hundreds of thousands of events that is most of a rebuild's CPU. A plain subscription's
    callback is several times cheaper, and a no-wait request ends each batch with a status.

    One request is kept in flight ahead of the batch being folded, so nats-server reads and sends
    the next batch while this process decodes the current one."""

    def __init__(self, nc: NatsClient, consumer: str) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}"
        self._inbox = nc.new_inbox()
        # Requests in flight, oldest first: how many messages each asked for.
        self._wanted: deque[int] = deque()
        self._filling: list[Msg] = []
        self._ready: asyncio.Queue[tuple[list[Msg], int]] = asyncio.Queue()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        if not msg.data and msg.headers and msg.headers.get("Status"):
            self._complete()  # 404 no messages / 408 / end of a short batch
            return
        self._filling.append(msg)
        if self._wanted and len(self._filling) >= self._wanted[0]:
            self._complete()

    def _complete(self) -> None:
        asked = self._wanted.popleft() if self._wanted else 0
        batch, self._filling = self._filling, []
        self._ready.put_nowait((batch, asked))

    async def request(self, size: int) -> None:
        self._wanted.append(size)
        payload = json.dumps({"batch": size, "no_wait": True}).encode()
        await self._nc.publish(self._subject, payload, reply=self._inbox)

    async def next_batch(self) -> tuple[list[Msg], int]:
        """The oldest requested batch (empty: the stream had nothing more for it), and how many
        messages its request asked for."""
        return await asyncio.wait_for(self._ready.get(), REQUEST_TIMEOUT_S)

    @property
    def in_flight(self) -> int:
        return len(self._wanted) + self._ready.qsize()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


async def read_all(nc: NatsClient, p: AggregateTable) -> dict[str, tuple[Any, int]]:
    """Fold every event of the projection's aggregate type, oldest first, in memory."""
    js = nc.jetstream(timeout=10)
    consumer = f"rebuild_{p.name}_{new_id().replace('-', '')}"
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            name=consumer,
            filter_subject=p.filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
        ),
    )
    info = await js.consumer_info(STREAM, consumer)
    remaining = int(info.num_pending or 0)
    states: dict[str, tuple[Any, int]] = {}
    pull = _RawPull(nc, consumer)
    await pull.start()
    try:
        # Messages asked for and not delivered yet; `remaining`: not delivered yet at all.
        outstanding = 0
        while remaining > 0:
            while pull.in_flight < 2 and outstanding < remaining:
                size = min(BATCH, remaining - outstanding)
                await pull.request(size)
                outstanding += size
            msgs, asked = await pull.next_batch()
            outstanding -= asked
            if not msgs:
                continue
            events = [decode_event(m.data, stream_sequence(m)) for m in msgs]
            states.update(p.fold(states, events))
            remaining = pending(msgs[-1])
    finally:
        await pull.stop()
        with contextlib.suppress(Exception):
            await js.delete_consumer(STREAM, consumer)
    return states


async def rebuild(conninfo: str, nc: NatsClient, p: AggregateTable) -> tuple[int, float]:
    """Returns (rows written, seconds)."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        await checkpoints.lock(conn, p.name)
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(p.name)))
        # Hundreds of thousands of live states make every collector pass walk them all: the fold
        # allocates nothing cyclic, so the collector rests until they are written and freed
        # (enabled while they live, its first full pass walked them all once more).
        gc.disable()
        try:
            states = await read_all(nc, p)
            await p.copy_in(conn, states)
            last = max((seq for _s, seq in states.values()), default=0)
            rows = len(states)
            del states
        finally:
            gc.enable()
        await checkpoints.advance(conn, p.name, last)
    elapsed = time.perf_counter() - started
    log.info("rebuilt %s: %d rows in %.2fs", p.name, rows, elapsed)
    return rows, elapsed
