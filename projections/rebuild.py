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
    callback is several times cheaper, and a no-wait request ends each batch with a status."""

    def __init__(self, nc: NatsClient, consumer: str) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}"
        self._inbox = nc.new_inbox()
        self._batch: list[Msg] = []
        self._wanted = 0
        self._done = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        if not msg.data and msg.headers and msg.headers.get("Status"):
            self._done.set()  # 404 no messages / 408 / end of a short batch
            return
        self._batch.append(msg)
        if len(self._batch) >= self._wanted:
            self._done.set()

    async def next_batch(self, size: int) -> list[Msg]:
        self._batch, self._wanted = [], size
        self._done.clear()
        request = json.dumps({"batch": size, "no_wait": True}).encode()
        await self._nc.publish(self._subject, request, reply=self._inbox)
        await asyncio.wait_for(self._done.wait(), REQUEST_TIMEOUT_S)
        return self._batch

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
    # Hundreds of thousands of live states make every collector pass walk them all: the fold
    # allocates nothing cyclic, so the collector can rest until it is done.
    gc.disable()
    try:
        while remaining > 0:
            msgs = await pull.next_batch(min(BATCH, remaining))
            if not msgs:
                continue
            events = [decode_event(m.data, stream_sequence(m)) for m in msgs]
            states.update(p.fold(states, events))
            remaining = pending(msgs[-1])
    finally:
        gc.enable()
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
        states = await read_all(nc, p)
        await p.copy_in(conn, states)
        last = max((seq for _s, seq in states.values()), default=0)
        await checkpoints.advance(conn, p.name, last)
    elapsed = time.perf_counter() - started
    log.info("rebuilt %s: %d rows in %.2fs", p.name, len(states), elapsed)
    return len(states), elapsed
