"""The runpod SDK (1.12.0, from PyPI), unchanged, against GPUWorker: as a client
(`runpod.Endpoint` with `runpod.endpoint_url_base = <api>/endpoints` and an API key) and as a
worker (`runpod.serverless.start(handler)` in a subprocess, tests/sdk_worker.py, with the
environment services/worker_env.py builds).

Jobs are never lost and never completed twice: a worker killed mid-job (SIGKILL of its process
group, as when its container dies) loses the job to another worker, which completes it once; the
dead attempt's late result is refused; a job past its executionTimeout is TIMED_OUT and its worker
is told to stop it (the SDK cancels the handler, which leaves a marker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import runpod

from tests.api_helpers import assert_error, wait_for
from tests.serverless_helpers import (
    create_endpoint,
    run,
    runpod_sdk,
    sdk_worker,
    status,
    wait_status,
    worker_client,
    worker_path,
)
from tests.servers import Stack

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def sdk(serverless_stack: Stack) -> Iterator[tuple[str, Any]]:
    """The SDK pointed at the stack with a fresh user's API key; the key and its http client."""
    with runpod_sdk(serverless_stack) as pointed:
        yield pointed


def test_sdk_client_and_worker_run_runsync_status_health(
    serverless_stack: Stack, sdk: tuple[str, Any], tmp_path: Path
) -> None:
    _key, client = sdk
    endpoint = create_endpoint(client)
    remote = runpod.Endpoint(endpoint["id"])
    with sdk_worker(serverless_stack, endpoint, tmp_path, "w-one") as worker:
        output = remote.run_sync({"prompt": "hello"}, timeout=60)
        assert output == {"echo": {"prompt": "hello"}, "worker": "w-one"}, worker.output()

        job = remote.run({"input": {"n": 7}})
        assert job.output(timeout=60) == {"echo": {"n": 7}, "worker": "w-one"}
        assert job.status() == "COMPLETED"
        shown = status(client, endpoint["id"], job.job_id)
        assert shown["workerId"] == "w-one" and shown["executionTime"] >= 0
        assert shown["delayTime"] >= 0

        failing = remote.run({"input": {"mode": "fail", "message": "no GPU for you"}})
        assert failing.output(timeout=60) is None
        assert failing.status() == "FAILED"
        assert "no GPU for you" in status(client, endpoint["id"], failing.job_id)["error"]

        health = wait_for(
            lambda: (h := remote.health())["workers"]["idle"] == 1 and h, 20, "an idle worker"
        )
        assert health["jobs"]["completed"] == 2 and health["jobs"]["failed"] == 1
        assert health["jobs"]["inQueue"] == 0 and health["jobs"]["inProgress"] == 0
        assert set(health["workers"]) >= {"idle", "running", "initializing", "unhealthy"}
        assert client.get(f"/endpoints/{endpoint['id']}").json()["workersIdle"] == 1


def test_sdk_cancel_and_purge_queue(
    serverless_stack: Stack, sdk: tuple[str, Any], tmp_path: Path
) -> None:
    _key, client = sdk
    endpoint = create_endpoint(client)
    remote = runpod.Endpoint(endpoint["id"])
    queued = [remote.run({"input": {"k": k}}) for k in range(3)]  # no worker yet
    cancelled = queued[0].cancel()
    assert cancelled["status"] == "CANCELLED"
    assert remote.purge_queue() == {"removed": 2, "status": "completed"}
    assert [j.status() for j in queued] == ["CANCELLED"] * 3
    with sdk_worker(serverless_stack, endpoint, tmp_path) as worker:
        # A running job is not purged; a cancelled running job is dropped by its worker.
        marker = tmp_path / "stopped"
        running = remote.run({"input": {"mode": "sleep", "seconds": 60, "marker": str(marker)}})
        wait_status(client, endpoint["id"], running.job_id, lambda s: s["status"] == "IN_PROGRESS")
        assert remote.purge_queue()["removed"] == 0
        assert running.status() == "IN_PROGRESS"
        assert running.cancel()["status"] == "CANCELLED"
        wait_for(marker.exists, 30, "the worker to drop the cancelled job")
        assert running.job_id in marker.read_text(), worker.output()
        # Nothing of it was handed out to anyone again.
        assert remote.health()["jobs"]["inQueue"] == 0


def test_worker_killed_mid_job_loses_it_to_another_which_completes_it_once(
    serverless_stack: Stack, sdk: tuple[str, Any], tmp_path: Path
) -> None:
    _key, client = sdk
    endpoint = create_endpoint(client)
    remote = runpod.Endpoint(endpoint["id"])
    with sdk_worker(serverless_stack, endpoint, tmp_path, "w-doomed") as doomed:
        job = remote.run({"input": {"mode": "sleep", "seconds": 4}})
        wait_status(
            client,
            endpoint["id"],
            job.job_id,
            lambda s: s["status"] == "IN_PROGRESS" and s.get("workerId") == "w-doomed",
        )
        doomed.kill()
    # Silent for 3 s: the job goes back to the head of the queue, and the next worker runs it.
    with sdk_worker(serverless_stack, endpoint, tmp_path, "w-heir"):
        done = wait_status(
            client, endpoint["id"], job.job_id, lambda s: s["status"] == "COMPLETED", 90
        )
    assert done["workerId"] == "w-heir"
    assert done["output"] == {"slept": 4, "worker": "w-heir"}
    # The dead worker's result, arriving late, is refused and changes nothing.
    with worker_client(serverless_stack, endpoint, "w-doomed") as late:
        refused = late.post(
            worker_path(endpoint, "job-done", "w-doomed", job.job_id) + "&isStream=false",
            content=b'{"output": {"slept": 4, "worker": "w-doomed"}}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert_error(refused, 409, "refused")
    assert status(client, endpoint["id"], job.job_id) == done
    assert remote.health()["jobs"]["completed"] == 1


def test_execution_timeout_times_the_job_out_and_job_stop_tells_the_worker(
    serverless_stack: Stack, sdk: tuple[str, Any], tmp_path: Path
) -> None:
    _key, client = sdk
    endpoint = create_endpoint(client, executionTimeoutMs=2_000)
    marker = tmp_path / "timed-out"
    with sdk_worker(serverless_stack, endpoint, tmp_path) as worker:
        job_id = run(
            client, endpoint["id"], {"mode": "sleep", "seconds": 60, "marker": str(marker)}
        )
        timed_out = wait_status(
            client, endpoint["id"], job_id, lambda s: s["status"] == "TIMED_OUT", 90
        )
        assert "executionTimeout of 2000 ms" in timed_out["error"]
        wait_for(marker.exists, 30, "the worker to stop the timed-out job")
        assert job_id in marker.read_text(), worker.output()
        # The worker is free again and takes the next job; a policy timeout beats the endpoint's.
        quick = run(client, endpoint["id"], {"n": 1}, policy={"executionTimeout": 60_000})
        assert wait_status(client, endpoint["id"], quick, lambda s: s["status"] == "COMPLETED")
    retried = client.post(f"/endpoints/{endpoint['id']}/retry/{job_id}")
    assert retried.status_code == 200 and retried.json() == {"id": job_id, "status": "IN_QUEUE"}


def test_streaming_handler_parts_reach_the_stream_route(
    serverless_stack: Stack, sdk: tuple[str, Any], tmp_path: Path
) -> None:
    _key, client = sdk
    endpoint = create_endpoint(client)
    with sdk_worker(serverless_stack, endpoint, tmp_path, "w-stream", handler="stream"):
        job_id = run(client, endpoint["id"], {"count": 3})
        done = wait_status(client, endpoint["id"], job_id, lambda s: s["status"] == "COMPLETED")
    parts = [{"part": n, "worker": "w-stream"} for n in range(3)]
    assert done["output"] == parts
    streamed = client.get(f"/endpoints/{endpoint['id']}/stream/{job_id}").json()
    assert streamed == {"status": "COMPLETED", "stream": [{"output": p} for p in parts]}
    # Each part is handed out once.
    again = client.get(f"/endpoints/{endpoint['id']}/stream/{job_id}").json()
    assert again == {"status": "COMPLETED", "stream": []}
