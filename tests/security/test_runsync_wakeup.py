"""`runsync` answers as soon as its job is final, even when the job became final before the submit
was answered.

Found by bench/jobs.py: jobs started 5 ms after they were queued and ran in well under 100 ms, yet
`runsync` answered after about a second. Its waiter began only after the submit returned (which
waits for the jobs read model), so a job the worker had finished meanwhile was announced (the
jobs projection's NOTIFY) to nobody, and runsync slept until its one-second re-read. The waiter now
watches the job from before the submit. This drives the api's JobWaits over a real PostgreSQL
LISTEN/NOTIFY, as the jobs projection announces a final job."""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from projections.jobs import CHANNEL
from services.api.job_waits import RECHECK_S, JobWaits


async def test_a_job_final_before_its_submit_returned_wakes_its_runsync(
    job_waits: JobWaits, database_url: str
) -> None:
    job_id = str(uuid.uuid4())
    loop = asyncio.get_running_loop()
    with job_waits.watching(job_id) as watch:
        # The submit is being answered; meanwhile the job is taken, run and announced final.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as db:
            await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, job_id))
        await asyncio.sleep(0.3)  # the announcement has arrived before anyone waits
        began = loop.time()
        await watch.wait(30)
        took = loop.time() - began
    assert took < RECHECK_S / 4, f"runsync slept {took:.2f} s on a job already final"

    other = str(uuid.uuid4())
    with job_waits.watching(other) as watch:
        began = loop.time()
        await watch.wait(0.2)  # nothing announced: it waits its time, then re-reads
        assert loop.time() - began >= 0.15
