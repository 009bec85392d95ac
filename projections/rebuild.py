"""Drop a projection's rows and replay its events from stream sequence 1.

The rebuild holds the checkpoint row's lock for its whole transaction, so a live projector waits and
then skips what the rebuild already applied: rebuilding is safe while everything runs."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg import sql

from events.catalog import decode_event
from events.subjects import STREAM
from projections import checkpoints
from projections.aggregate_table import AggregateTable

log = logging.getLogger("gpuworker.rebuild")

FETCH = 2000


async def read_all(nc: NatsClient, p: AggregateTable) -> dict[str, tuple[Any, int]]:
    """Fold every event of the projection's aggregate type, oldest first, in memory."""
    js = nc.jetstream(timeout=10)
    psub = await js.pull_subscribe(
        p.filter_subject,
        durable=None,
        stream=STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            max_waiting=1,
        ),
    )
    info = await psub.consumer_info()
    remaining = int(info.num_pending or 0)
    states: dict[str, tuple[Any, int]] = {}
    try:
        while remaining > 0:
            msgs = await psub.fetch(min(FETCH, remaining), timeout=10)
            if not msgs:
                continue
            events = [decode_event(m.data, m.metadata.sequence.stream) for m in msgs]
            states.update(p.fold(states, events))
            remaining = int(msgs[-1].metadata.num_pending or 0)
    finally:
        await psub.unsubscribe()
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
