"""What the jobs read model does besides its rows, in the same transaction, exactly once per event:

- a NOTIFY on `gpuworker_jobs` for every job that became final, which PostgreSQL delivers only
  once the rows are committed: a `runsync` waiting for its job wakes when the finished job is
  readable, without polling (services/api/job_waits.py). The payload is the final state itself
  (JSON), so the waiter need not read the row back; a state too large for a payload (PostgreSQL
  takes under 8000 bytes) goes as the job's id, and the waiter reads the row;
- a webhook delivery (the outbox `webhook_deliveries`, one row per final event of a job that has a
  webhook), sent by services/processes/webhook_sender.py. The row is written with the event that
  made the job final, so no final status is ever missed or sent for an event twice; a rebuild of
  the projection replays rows only and so never sends old webhooks again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from events.envelope import Envelope
from events.job import JobCancelled, JobCompleted, JobFailed, JobTimedOut

CHANNEL = "gpuworker_jobs"
MAX_NOTE_BYTES = 7900
FINAL_EVENTS = (JobCompleted, JobFailed, JobCancelled, JobTimedOut)


async def job_effects(
    conn: psycopg.AsyncConnection[Any],
    events: Sequence[Envelope],
    touched: dict[str, tuple[Any, int]],
) -> None:
    finished: dict[str, str] = {}
    deliveries: list[tuple[str, int, str]] = []
    for event in events:
        if not isinstance(event.data, FINAL_EVENTS):
            continue
        job_id = event.aggregate.id
        state = touched[job_id][0]
        finished[job_id] = notice(job_id, state)
        webhook = state.webhook
        if webhook:
            deliveries.append((job_id, event.sequence, webhook))
    if deliveries:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO webhook_deliveries (job_id, sequence, url) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                deliveries,
            )
    if finished:
        await conn.execute(
            "SELECT pg_notify(%s, note) FROM unnest(%b::text[]) AS note",
            (CHANNEL, [finished[job_id] for job_id in sorted(finished)]),
        )


def notice(job_id: str, state: Any) -> str:
    """The job's state as of this batch when it is final and fits a payload; else its id (a later
    event of the batch, a retry, may have queued it again: the waiter reads the row)."""
    if state.final:
        encoded = msgspec.json.encode(state)
        if len(encoded) <= MAX_NOTE_BYTES:
            return encoded.decode()
    return job_id
