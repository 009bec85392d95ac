"""Operator commands on the ledger: `gpuworker ledger verify`."""

from __future__ import annotations

import psycopg

from events.catalog import decode_event
from ledger.consumer import CHECKPOINT, SUBJECTS
from ledger.verify import Replayed, check_replay, check_tables
from projections import checkpoints
from projections.ordered_pull import OrderedPull
from services.config import Settings
from services.nats_connection import connect_role
from services.nats_permissions import OPERATOR_USER


async def replay(settings: Settings, upto: int) -> Replayed:
    """What the stream implies, from sequence 1 to the ledger's checkpoint (what it has read)."""
    replayed = Replayed()
    if upto == 0:
        return replayed
    nc = await connect_role(settings, OPERATOR_USER, "ledger-verify")
    pull = OrderedPull(nc, list(SUBJECTS), 1, batch=5000)
    try:
        await pull.open()
        while True:
            msgs = await pull.next(timeout=5.0)
            events = [decode_event(m.data, m.metadata.sequence.stream) for m in msgs]
            replayed.apply(e for e in events if e.sequence <= upto)
            if not msgs or events[-1].sequence >= upto or pull.pending == 0:
                return replayed
    finally:
        await pull.close()
        await nc.close()


async def verify(settings: Settings) -> int:
    connection = await psycopg.AsyncConnection.connect(settings.database_url)
    async with connection as conn, conn.transaction():
        # One consistent view of the tables, while the ledger keeps writing.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        upto = await checkpoints.read(conn, CHECKPOINT)
        problems = await check_tables(conn)
        replayed = await replay(settings, upto)
        problems += await check_replay(conn, replayed)
    for problem in problems:
        print(f"BROKEN: {problem}")
    print(
        f"ledger verify: {len(problems)} problem(s); {len(replayed.sessions)} sessions replayed"
        f" to sequence {upto}"
    )
    return 1 if problems else 0
