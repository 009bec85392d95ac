"""The job API and the worker protocol over plain HTTP (as curl would send them): RunPod's shapes,
what a worker may and may not do, the queue's order, payload limits and storage, retry rules, the
stop channel and the drain of workers of an older version."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import psycopg
import pytest

from events.envelope import AggregateRef
from events.job import JobCompleted
from events.store import JetStreamEventStore
from services.nats_permissions import DECIDERS_USER
from tests.api_helpers import assert_error, wait_for
from tests.serverless_helpers import (
    account,
    create_endpoint,
    env_for,
    run,
    status,
    wait_status,
    worker_client,
    worker_path,
)
from tests.servers import Stack, connect_as

pytestmark = pytest.mark.timeout(180)
FORM = {"content-type": "application/x-www-form-urlencoded"}


def take(worker: httpx.Client, endpoint: dict[str, Any], worker_id: str) -> dict[str, Any] | None:
    response = worker.get(worker_path(endpoint, "job-take", worker_id) + "&job_in_progress=0")
    if response.status_code == 204:
        assert response.content == b""
        return None
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def done(
    worker: httpx.Client, endpoint: dict[str, Any], worker_id: str, job_id: str, body: bytes
) -> httpx.Response:
    # The SDK labels the JSON form-encoded; the api reads it as JSON all the same.
    path = worker_path(endpoint, "job-done", worker_id, job_id) + "&isStream=false"
    return worker.post(path, content=body, headers=FORM)


def payload_rows(stack: Stack, job_id: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM job_payloads WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert found is not None
    return int(found[0])


async def completions(stack: Stack, job_id: str) -> int:
    nc = await connect_as(stack.nats, DECIDERS_USER)
    try:
        events = await JetStreamEventStore(nc).load(AggregateRef("job", job_id))
    finally:
        await nc.close()
    return sum(isinstance(e.data, JobCompleted) for e in events)


def test_run_take_done_status_in_runpods_shapes(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    queued = client.post(f"/endpoints/{endpoint['id']}/run", json={"input": {"prompt": "hi"}})
    assert queued.status_code == 200
    assert set(queued.json()) == {"id", "status"} and queued.json()["status"] == "IN_QUEUE"
    job_id = queued.json()["id"]
    assert status(client, endpoint["id"], job_id) == {"id": job_id, "status": "IN_QUEUE"}
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        assert take(worker, endpoint, "w1") == {"id": job_id, "input": {"prompt": "hi"}}
        # A take does not wait for the read model (it is the hot path): the status follows.
        running = wait_status(client, endpoint["id"], job_id, lambda s: s["status"] != "IN_QUEUE")
        assert running["status"] == "IN_PROGRESS" and running["workerId"] == "w1"
        assert running["delayTime"] >= 0
        accepted = done(worker, endpoint, "w1", job_id, b'{"output": {"text": "hello"}}')
        assert accepted.status_code == 200, accepted.text
        # The SDK sends a done call again when it lost the answer: accepted once, 200 both times.
        again = done(worker, endpoint, "w1", job_id, b'{"output": {"text": "hello"}}')
        assert again.status_code == 200, again.text
        # A different result for the finished job is refused and changes nothing.
        other = done(worker, endpoint, "w1", job_id, b'{"output": {"text": "other"}}')
        assert_error(other, 409, "another result")
        # Nothing queued: the long poll answers 204 once it is over.
        assert take(worker, endpoint, "w1") is None
    final = status(client, endpoint["id"], job_id)
    assert set(final) == {"id", "status", "delayTime", "executionTime", "workerId", "output"}
    assert final["status"] == "COMPLETED" and final["output"] == {"text": "hello"}
    assert asyncio.run(completions(serverless_stack, job_id)) == 1


def test_worker_tokens_are_scoped_to_their_endpoint_and_worker(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    other = create_endpoint(client)
    job_id = run(client, endpoint["id"], 1)
    path = worker_path(endpoint, "job-take", "w1")
    with httpx.Client(base_url=serverless_stack.url, timeout=30) as anonymous:
        assert_error(anonymous.get(path), 401, "worker token")
        # A user's own API key is no worker token.
        key, _ = account(serverless_stack)
        assert_error(anonymous.get(path, headers={"authorization": f"Bearer {key}"}), 401)
    with worker_client(serverless_stack, other, "w1") as foreign:
        assert_error(foreign.get(path), 401)
    with worker_client(serverless_stack, endpoint, "w2") as sibling:
        assert_error(sibling.get(path), 401)
        # Nor does a worker token open the user API.
        assert_error(sibling.get("/endpoints"), 401)
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        assert take(worker, endpoint, "w1") == {"id": job_id, "input": 1}
        # Another worker of the endpoint cannot finish w1's job, nor add to its stream.
        with worker_client(serverless_stack, endpoint, "w2") as sibling:
            assert_error(done(sibling, endpoint, "w2", job_id, b'{"output": 2}'), 409)
            partial = sibling.post(
                worker_path(endpoint, "job-stream", "w2", job_id), json={"output": 2}
            )
            assert_error(partial, 409, "not held by worker w2")
        # What the job refuses is never stored: only its input is in the payload store.
        assert payload_rows(serverless_stack, job_id) == 1
        assert done(worker, endpoint, "w1", job_id, b'{"output": 1}').status_code == 200
    assert status(client, endpoint["id"], job_id)["output"] == 1


def test_fifo_low_priority_last_and_batch_take(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    low = run(client, endpoint["id"], "low", policy={"lowPriority": True})
    normal = [run(client, endpoint["id"], f"n{k}") for k in range(3)]
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        batch = worker.get(worker_path(endpoint, "job-take-batch", "w1") + "&batch_size=2")
        assert batch.status_code == 200, batch.text
        assert [j["id"] for j in batch.json()] == normal[:2]
        assert [j["input"] for j in batch.json()] == ["n0", "n1"]
        taken = take(worker, endpoint, "w1")
        assert taken is not None and taken["id"] == normal[2]
        taken = take(worker, endpoint, "w1")
        assert taken is not None and taken["id"] == low


def test_concurrent_takers_get_each_job_exactly_once(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    jobs = [run(client, endpoint["id"], k) for k in range(24)]
    workers = [f"w{n}" for n in range(6)]
    tokens = {w: env_for(serverless_stack, endpoint, w)["RUNPOD_AI_API_KEY"] for w in workers}

    async def drain(worker_id: str, http: httpx.AsyncClient) -> list[str]:
        got: list[str] = []
        headers = {"authorization": tokens[worker_id]}
        while True:
            response = await http.get(worker_path(endpoint, "job-take", worker_id), headers=headers)
            if response.status_code == 204:
                return got
            got.append(response.json()["id"])

    async def all_of_them() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=serverless_stack.url, timeout=30) as http:
            return await asyncio.gather(*(drain(w, http) for w in workers))

    taken = asyncio.run(all_of_them())
    flat = [job for got in taken for job in got]
    assert sorted(flat) == sorted(jobs), "a job taken twice, or never"
    for got in taken:  # each worker got its share in queue order
        assert got == sorted(got, key=jobs.index)
    wait_for(
        lambda: client.get(f"/endpoints/{endpoint['id']}").json()["jobsInProgress"] == 24,
        10,
        "24 jobs in progress",
    )


def test_payload_limits_and_payloads_stay_out_of_events(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    base = f"/endpoints/{endpoint['id']}"

    def body(size: int) -> bytes:
        filler = size - len(b'{"input":""}')
        return b'{"input":"' + b"x" * filler + b'"}'

    mib = 1024 * 1024
    assert_error(client.post(f"{base}/run", content=body(10 * mib + 1)), 413, "10 MiB")
    assert_error(client.post(f"{base}/runsync", content=body(20 * mib + 1)), 413, "20 MiB")
    bigger = client.post(f"{base}/runsync?wait=0", content=body(10 * mib + 1))
    assert bigger.status_code == 200 and bigger.json()["status"] == "IN_QUEUE", bigger.text
    large_input = {"blob": "y" * (3 * mib)}
    job_id = run(client, endpoint["id"], large_input)
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        first = take(worker, endpoint, "w1")
        assert first is not None and first["id"] == bigger.json()["id"]
        assert len(first["input"]) == 10 * mib + 1 - len(b'{"input":""}')
        second = take(worker, endpoint, "w1")
        assert second == {"id": job_id, "input": large_input}
        result = json.dumps({"output": {"blob": "z" * (5 * mib)}}).encode()
        assert done(worker, endpoint, "w1", job_id, result).status_code == 200
    assert status(client, endpoint["id"], job_id)["output"] == {"blob": "z" * (5 * mib)}

    async def sizes() -> list[int]:
        nc = await connect_as(serverless_stack.nats, DECIDERS_USER)
        try:
            events = await JetStreamEventStore(nc).load(AggregateRef("job", job_id))
        finally:
            await nc.close()
        return [len(json.dumps(json.loads(json.dumps(e.data, default=str)))) for e in events]

    assert max(asyncio.run(sizes())) < 1024, "a payload went into an event"


def test_bad_bodies_are_400s_naming_the_field(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    base = f"/endpoints/{endpoint['id']}"
    for bad, field in (
        ({}, "input"),
        ({"input": None}, "input"),
        ({"input": 1, "policy": {"ttl": "soon"}}, "policy.ttl"),
        ({"input": 1, "policy": {"executionTimeout": 5}}, "policy.executionTimeout"),
        ({"input": 1, "webhook": "ftp://example.com/hook"}, "webhook"),
        ({"input": 1, "webhook": "http://localhost:9/hook"}, "webhook"),
        # A private address, spelled out only here: it is refused before anything is sent.
        ({"input": 1, "webhook": "http://" + ".".join(("10", "1", "2", "3")) + "/"}, "webhook"),
        ({"input": 1, "s3Config": {}}, "s3Config"),
    ):
        assert_error(client.post(f"{base}/run", json=bad), 400, f"`{field}`")
    assert_error(client.post(f"{base}/run", content=b"{nope"), 400, "not valid JSON")
    assert client.get(f"{base}/health").json()["jobs"]["inQueue"] == 0


def test_retry_only_from_failed_or_timed_out_and_late_results_after_it(
    serverless_stack: Stack,
) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    base = f"/endpoints/{endpoint['id']}"
    ok_job = run(client, endpoint["id"], "fine")
    failing = run(client, endpoint["id"], "broken")
    assert_error(client.post(f"{base}/retry/{ok_job}"), 409, "FAILED or TIMED_OUT")
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        assert take(worker, endpoint, "w1") is not None
        assert take(worker, endpoint, "w1") is not None
        assert done(worker, endpoint, "w1", ok_job, b'{"output": 1}').status_code == 200
        error = b'{"error": "CUDA out of memory"}'
        assert done(worker, endpoint, "w1", failing, error).status_code == 200
        failed = status(client, endpoint["id"], failing)
        assert failed["status"] == "FAILED" and failed["error"] == "CUDA out of memory"
        assert_error(client.post(f"{base}/retry/{ok_job}"), 409)
        retried = client.post(f"{base}/retry/{failing}")
        assert retried.json() == {"id": failing, "status": "IN_QUEUE"}
        # The first attempt's result, sent again after the retry, is refused.
        assert_error(done(worker, endpoint, "w1", failing, error), 409)
        assert take(worker, endpoint, "w1") == {"id": failing, "input": "broken"}
        assert done(worker, endpoint, "w1", failing, b'{"output": "ok"}').status_code == 200
    final = status(client, endpoint["id"], failing)
    assert final["status"] == "COMPLETED" and final["output"] == "ok" and final["retries"] == 1
    assert client.get(f"{base}/health").json()["jobs"]["retried"] == 1


def test_job_stop_names_cancelled_jobs_and_pings_report_health(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    base = f"/endpoints/{endpoint['id']}"
    job_id = run(client, endpoint["id"], "long")
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        assert take(worker, endpoint, "w1") is not None
        ping = worker.get(worker_path(endpoint, "ping", "w1"), params={"job_id": job_id})
        assert ping.status_code == 200, ping.text
        wait_for(
            lambda: (
                client.get(f"{base}/health").json()
                == {
                    "jobs": {
                        "completed": 0,
                        "failed": 0,
                        "inProgress": 1,
                        "inQueue": 0,
                        "retried": 0,
                    },
                    "workers": {"idle": 0, "running": 1, "initializing": 0, "unhealthy": 0},
                }
            ),
            10,
            "the running worker and its job in /health",
        )
        assert client.post(f"{base}/cancel/{job_id}").json()["status"] == "CANCELLED"
        stop = worker.get(worker_path(endpoint, "job-stop", "w1"))
        assert stop.status_code == 200, stop.text
        assert stop.json() == {"jobsToStop": [job_id]}
        worker.get(worker_path(endpoint, "ping", "w1"))  # no longer runs it
        assert worker.get(worker_path(endpoint, "job-stop", "w1")).status_code == 204
        # A failed fitness check, as the SDK reports it.
        sick = worker.get(
            worker_path(endpoint, "ping", "w1"),
            # A NUL byte from customer code is dropped, not a 500 (PostgreSQL stores none).
            params={"status": "unhealthy", "check": "check_gpu", "reason": "no CUDA\x00 device"},
        )
        assert sick.status_code == 200
        health = client.get(f"{base}/health").json()
        assert health["workers"]["unhealthy"] == 1
        assert "check_gpu failed: no CUDA device" in health["workers"]["reasons"][0]
        assert client.get(base).json()["unhealthyReasons"] == health["workers"]["reasons"]


def test_workers_of_an_older_version_get_no_new_jobs(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    old = create_endpoint(client, env={"MODEL": "a"})
    new = client.patch(f"/endpoints/{old['id']}", json={"env": {"MODEL": "b"}}).json()
    assert new["version"] == 2
    job_id = run(client, old["id"], 1)
    with worker_client(serverless_stack, old, "w-old") as stale:
        assert take(stale, old, "w-old") is None
    with worker_client(serverless_stack, new, "w-new") as current:
        assert take(current, new, "w-new") == {"id": job_id, "input": 1}


def test_a_runsync_that_answers_before_the_end_leaves_its_job_readable(
    serverless_stack: Stack,
) -> None:
    """runsync waits for the job's end, not for its queued row; when it answers before the end
    (here at once, ?wait=0), the id it gives must already be readable, as after /run."""
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    for n in range(20):
        answer = client.post(f"/endpoints/{endpoint['id']}/runsync?wait=0", json={"input": n})
        assert answer.status_code == 200 and answer.json()["status"] == "IN_QUEUE", answer.text
        job_id = answer.json()["id"]
        assert status(client, endpoint["id"], job_id) == {"id": job_id, "status": "IN_QUEUE"}


def test_idempotent_run(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    path = f"/endpoints/{endpoint['id']}/run"
    headers = {"Idempotency-Key": "job-1"}
    first = client.post(path, json={"input": 1}, headers=headers)
    second = client.post(path, json={"input": 1}, headers=headers)
    assert first.json() == second.json()
    assert_error(client.post(path, json={"input": 2}, headers=headers), 409)
    shown = wait_for(lambda: client.get(f"/endpoints/{endpoint['id']}").json(), 5, "endpoint")
    assert shown["jobsInQueue"] == 1


def test_a_jobs_partial_outputs_are_capped(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    job_id = run(client, endpoint["id"], "streams a lot")
    path = worker_path(endpoint, "job-stream", "w1", job_id) + "&isStream=false"
    part = b'{"output": "' + b"p" * (16 * 1024 * 1024 - 2) + b'"}'  # 16 MiB of output each
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        assert take(worker, endpoint, "w1") is not None
        for _ in range(4):
            assert worker.post(path, content=part).status_code == 200
        assert_error(worker.post(path, content=b'{"output": 1}'), 413, "64 MiB")
    streamed = client.get(f"/endpoints/{endpoint['id']}/stream/{job_id}").json()
    assert len(streamed["stream"]) == 4


def test_worker_protocol_refusals_are_in_the_seeds_shape_and_counted(
    serverless_stack: Stack,
) -> None:
    """The protocol is served ahead of Litestar (services/api/worker_front.py): its refusals still
    read like every other route's, and its requests are in the api's Prometheus series."""
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    version = f"?v={endpoint['version']}"
    with worker_client(serverless_stack, endpoint, "w1") as worker:
        batch = worker_path(endpoint, "job-take-batch", "w1")
        for size in ("0", "65", "two"):
            assert_error(worker.get(f"{batch}&batch_size={size}"), 400, "`batch_size`")
        take_path = worker_path(endpoint, "job-take", "w1")
        assert_error(worker.get(take_path.replace(version, "?v=one")), 400, "`v`")
        # Not the protocol's (a route's wrong method): Litestar answers, as everywhere.
        assert_error(worker.post(take_path), 405, "allowed:", "GET")
        job_id = run(client, endpoint["id"], 1)
        taken = take(worker, endpoint, "w1")
        assert taken is not None and taken["id"] == job_id
        assert_error(done(worker, endpoint, "w1", job_id, b"[1]"), 400, "not a JSON object")
        assert_error(done(worker, endpoint, "w1", "no such job", b"{}"), 404, "job not found")
        too_big = b'{"output": "' + b"x" * (20 * 1024 * 1024 + 64 * 1024) + b'"}'
        assert_error(done(worker, endpoint, "w1", job_id, too_big), 413, "20 MiB")
        assert done(worker, endpoint, "w1", job_id, b'{"output": 2}').status_code == 200
    assert status(client, endpoint["id"], job_id)["output"] == 2
    metrics = httpx.get(f"{serverless_stack.url}/metrics", timeout=30).text
    done_series = [
        line
        for line in metrics.splitlines()
        if line.startswith("litestar_requests_total{")
        and 'path="/worker/v1/{endpoint_id}/job-done/{worker_id}/{job_id}"' in line
    ]
    assert any('status_code="413"' in line for line in done_series), done_series
    assert any('status_code="200"' in line for line in done_series), done_series
