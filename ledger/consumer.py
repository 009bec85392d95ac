"""The ledger's reading of the event stream: usage sessions, their settlement, and credits.

Events are applied in stream order from the ledger's checkpoint, exactly once, with the
projections' mechanism (`projections.ordered_pull`): each batch's sessions, postings, derived state
and the checkpoint commit in one PostgreSQL transaction. A redelivered or replayed event cannot
post twice (posting ids are derived), and an event that cannot be applied stops the ledger loudly
rather than being stepped over: a skipped event here is lost money."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from events.envelope import Envelope
from events.host import HostLost, HostRecovered
from events.user import CreditGranted
from ledger import store
from ledger.accruals import lock_writers
from ledger.book import Posting, Progress, credit, settle
from ledger.pricing import price_of
from ledger.tracking import fold_event, key_of
from ledger.usage import Opened, Session

CHECKPOINT = "ledger"
# What the ledger reads of the stream.
SUBJECTS = ("ev.instance.>", "ev.volume.>", "ev.host.>", "ev.user.>", "ev.endpoint.>")


async def apply_events(conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
    """Inside the caller's transaction: everything these events mean to the ledger."""
    await lock_writers(conn)
    keys = {k for e in events if (k := key_of(e)) is not None}
    tracked = await store.load_tracked(conn, keys)
    for event in events:
        if isinstance(event.data, HostLost | HostRecovered):
            for t in await store.tracked_on_host(conn, event.aggregate.id):
                tracked.setdefault((t.resource_type, t.resource_id), t)
    before = dict(tracked)
    sessions = [s.id for t in tracked.values() for s in t.open.values()]
    progress = await store.load_progress(conn, sessions)
    changed: dict[str, Progress] = {}
    opened: list[tuple[Session, int]] = []
    ended: list[tuple[str, datetime, int, int]] = []
    postings: list[Posting] = []
    for event in events:
        data = event.data
        if isinstance(data, CreditGranted):
            postings.append(
                credit(
                    event.id,
                    event.aggregate.id,
                    data.amount_micros,
                    data.source,
                    event.occurred_at,
                    data.reason,
                )
            )
            continue
        for action in fold_event(tracked, event, price_of):
            if isinstance(action, Opened):
                opened.append((action.session, event.sequence))
                fresh = Progress(session=action.session)
                progress[action.session.id] = changed[action.session.id] = fresh
                continue
            settled, posting = settle(progress[action.session.id], action.ended_at)
            progress[action.session.id] = changed[action.session.id] = settled
            ended.append(
                (action.session.id, action.ended_at, settled.billed_seconds, event.sequence)
            )
            if posting is not None:
                postings.append(posting)
    # What is tracked first: posting reads an instance's GPU type from it (for its disks' rollup).
    await store.save_tracked(
        conn, [t for key, t in sorted(tracked.items()) if before.get(key) is not t]
    )
    await store.open_sessions(conn, opened)
    await store.end_sessions(conn, ended)
    await store.post(conn, postings)
    await store.save_progress(conn, list(changed.values()))


class LedgerProjection:
    """The ledger as the projection runner drives it (`projections.runner`): ordered, exactly once,
    halted loudly on an event it cannot apply. `lock` keeps an accrual cycle of the same process
    from interleaving with a batch."""

    name = CHECKPOINT
    filter_subjects = list(SUBJECTS)

    def __init__(self, lock: asyncio.Lock | None = None) -> None:
        self._lock = lock or asyncio.Lock()

    async def apply(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
        async with self._lock:
            await apply_events(conn, events)
