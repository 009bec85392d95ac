"""A runsync's wait (services/api/job_waits.py) on real PostgreSQL: the jobs projection's notice
carries the final state (projections/jobs.py), so the waiter answers without reading the row;
a notice with only the id, or one it cannot read, still wakes it to read the row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import psycopg
import pytest

from events.job import PayloadRef
from projections.jobs import CHANNEL, MAX_NOTE_BYTES, notice
from services.api.job_waits import JobWaits
from services.deciders.job import JobState

pytestmark = pytest.mark.timeout(60)
AT = datetime(2026, 12, 1, tzinfo=UTC)


def _state(status: str = "COMPLETED", webhook: str | None = None) -> JobState:
    return JobState(
        id="job-1",
        owner_id="user-1",
        endpoint_id="ep-1",
        input=PayloadRef(sha256="0" * 64, size=1),
        webhook=webhook,
        execution_timeout_ms=600_000,
        ttl_ms=86_400_000,
        retention_s=300,
        status=status,  # type: ignore[arg-type]
        submitted_at=AT,
        queued_at=AT,
        worker_id="w-1",
        finished_at=AT,
    )


async def _notify(database_url: str, note: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, note))


async def test_a_notice_with_the_final_state_answers_the_waiter(
    job_waits: JobWaits, database_url: str
) -> None:
    final = _state()
    with job_waits.watching("job-1") as watch:
        await _notify(database_url, notice("job-1", final))
        await watch.wait(5)
        assert watch.settled == final


async def test_a_notice_with_the_id_only_wakes_the_waiter_to_read_the_row(
    job_waits: JobWaits, database_url: str
) -> None:
    for note in ("job-1", '{"id": "job-1", "status": "A STATUS OF A LATER VERSION"}'):
        with job_waits.watching("job-1") as watch:
            began = asyncio.get_running_loop().time()
            await _notify(database_url, note)
            await watch.wait(5)
            assert watch.settled is None
            # Woken by the notice, not by the recheck a second later.
            assert asyncio.get_running_loop().time() - began < 0.9


def test_only_a_final_state_that_fits_a_payload_is_sent() -> None:
    assert msgspec.json.decode(notice("job-1", _state()), type=JobState) == _state()
    assert notice("job-1", _state("IN_QUEUE")) == "job-1"  # retried later in the same batch
    huge = _state(webhook="https://hooks.example.com/" + "x" * MAX_NOTE_BYTES)
    assert notice("job-1", huge) == "job-1"
