"""What the jobs read model does besides its rows, in the same transaction, exactly once per event:

- a NOTIFY on `gpuworker_jobs` with the id of every job that became final, which PostgreSQL
  delivers only once the rows are committed: a `runsync` waiting for its job wakes when the
  finished job is readable, without polling (services/api/job_waits.py);
- a webhook delivery (the outbox `webhook_deliveries`, one row per final event of a job that has a
  webhook), sent by services/processes/webhook_sender.py. The row is written with the event that
  made the job final, so no final status is ever missed or sent for an event twice; a rebuild of
  the projection replays rows only and so never sends old webhooks again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from events.envelope import Envelope
from events.job import JobCancelled, JobCompleted, JobFailed, JobTimedOut

CHANNEL = "gpuworker_jobs"
FINAL_EVENTS = (JobCompleted, JobFailed, JobCancelled, JobTimedOut)


async def job_effects(
    conn: psycopg.AsyncConnection[Any],
    events: Sequence[Envelope],
    touched: dict[str, tuple[Any, int]],
) -> None:
    finished: list[str] = []
    deliveries: list[tuple[str, int, str]] = []
    for event in events:
        if not isinstance(event.data, FINAL_EVENTS):
            continue
        job_id = event.aggregate.id
        finished.append(job_id)
        webhook = touched[job_id][0].webhook
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
            "SELECT pg_notify(%s, id) FROM unnest(%s::text[]) AS id",
            (CHANNEL, sorted(set(finished))),
        )
