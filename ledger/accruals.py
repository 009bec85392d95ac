"""An accrual cycle: every open session is charged for its whole seconds so far, in one
transaction. Run at least every minute (GPUWORKER_ACCRUAL_INTERVAL), so a running instance's cost
reaches the customer's balance within a minute, and spend control acts on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from ledger import store
from ledger.book import Posting, Progress, accrue


async def accrue_open_sessions(conn: psycopg.AsyncConnection[Any], now: datetime) -> int:
    """Inside the caller's transaction; returns how many postings were made."""
    changed: list[Progress] = []
    postings: list[Posting] = []
    for progress in await store.open_progress(conn):
        after, posting = accrue(progress, now)
        if after is not progress:
            changed.append(after)
        if posting is not None:
            postings.append(posting)
    await store.post(conn, postings)
    await store.save_progress(conn, changed)
    return len(postings)
