"""Retention: a finished job's status and result are kept GPUWORKER_JOB_RETENTION s after `run`
and GPUWORKER_JOB_SYNC_RETENTION s after `runsync` (30 and 5 minutes by default; 4 and 2 s on the
stack of this module), then the job is a 404, and the sweep deletes its input and result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from services.processes.job_retention import sweep
from tests.api_helpers import assert_error
from tests.serverless_helpers import (
    SERVERLESS_ENV,
    account,
    create_endpoint,
    run,
    status,
    worker_client,
    worker_path,
)
from tests.servers import Stack, running_stack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def short_lived(session_tmp: Path, pg_base_uri: str) -> Iterator[Stack]:
    tmp = session_tmp / "retention"
    tmp.mkdir()
    env = {**SERVERLESS_ENV, "GPUWORKER_JOB_RETENTION": "4", "GPUWORKER_JOB_SYNC_RETENTION": "2"}
    with running_stack(tmp, pg_base_uri, extra_env=env) as stack:
        yield stack


def payload_rows(stack: Stack, job_id: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM job_payloads WHERE job_id = %s", (job_id,))
        found = row.fetchone()
    assert found is not None
    return int(found[0])


def complete(stack: Stack, endpoint: dict[str, Any], job_id: str) -> None:
    with worker_client(stack, endpoint, "w1") as worker:
        taken = worker.get(worker_path(endpoint, "job-take", "w1"))
        assert taken.status_code == 200 and taken.json()["id"] == job_id
        path = worker_path(endpoint, "job-done", "w1", job_id)
        assert worker.post(path, content=b'{"output": "kept a while"}').status_code == 200


async def sweep_now(stack: Stack) -> int:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(stack.database_url, open=False)
    await pool.open()
    try:
        return await sweep(pool, int(time.time() * 1000))
    finally:
        await pool.close()


def test_results_are_kept_for_their_retention_then_gone(short_lived: Stack) -> None:
    _key, client = account(short_lived)
    endpoint = create_endpoint(client)
    base = f"/endpoints/{endpoint['id']}"
    job_id = run(client, endpoint["id"], "async")
    complete(short_lived, endpoint, job_id)
    synced = client.post(f"{base}/runsync?wait=0", json={"input": "sync"}).json()["id"]
    complete(short_lived, endpoint, synced)
    finished = time.monotonic()
    assert status(client, endpoint["id"], job_id)["output"] == "kept a while"
    assert status(client, endpoint["id"], synced)["output"] == "kept a while"
    assert payload_rows(short_lived, job_id) == 2  # its input and its result

    time.sleep(max(0.0, finished + 2.5 - time.monotonic()))
    assert_error(client.get(f"{base}/status/{synced}"), 404, "retention")
    assert status(client, endpoint["id"], job_id)["status"] == "COMPLETED"
    time.sleep(max(0.0, finished + 4.5 - time.monotonic()))
    assert_error(client.get(f"{base}/status/{job_id}"), 404, "retention")
    assert_error(client.post(f"{base}/retry/{job_id}"), 404)
    assert client.get(f"{base}/health").json()["jobs"]["completed"] == 0

    assert asyncio.run(sweep_now(short_lived)) >= 4
    assert payload_rows(short_lived, job_id) == payload_rows(short_lived, synced) == 0
