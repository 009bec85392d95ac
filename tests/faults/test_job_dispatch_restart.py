"""The job dispatcher holds its queues in memory: killed (SIGKILL of the deciders role under
`gpuworker up`, NATS syncing every write as in production), it is restarted by the supervisor and
rebuilds them from the job events. No acknowledged job is lost, the queue keeps its order, and a
job whose worker vanished while the dispatcher was down still goes back to the queue."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from services.security.worker_tokens import WorkerTokens
from services.worker_env import worker_env
from tests.api_helpers import PASSWORD, unique_email, wait_for
from tests.faults.stack import Up
from tests.serverless_helpers import GPU, SERVERLESS_ENV, TEMPLATE

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def serverless_up(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("up")
    os.chmod(folder, 0o755)
    stack = Up(folder, SERVERLESS_ENV)
    try:
        yield stack
    finally:
        stack.stop()


def test_queued_and_held_jobs_survive_a_dispatcher_crash(serverless_up: Up) -> None:
    up = serverless_up
    with httpx.Client(base_url=up.url, timeout=30) as anonymous:
        signed = anonymous.post(
            "/auth/signup", json={"name": "n", "email": unique_email(), "password": PASSWORD}
        )
    token = signed.json()["access_token"]
    user = httpx.Client(base_url=up.url, timeout=30, headers={"authorization": f"Bearer {token}"})
    endpoint = user.post(
        "/endpoints", json={"name": "e", "templateId": TEMPLATE, "gpuIds": GPU}
    ).json()
    tokens = WorkerTokens(up.connection()["GPUWORKER_SECRET_KEY"])

    def worker(worker_id: str) -> tuple[httpx.Client, str]:
        env = worker_env(up.url, endpoint["id"], worker_id, endpoint["version"], tokens, 1)
        root = env["RUNPOD_WEBHOOK_GET_JOB"].split("/job-take/")[0]
        headers = {"authorization": env["RUNPOD_AI_API_KEY"]}
        return httpx.Client(timeout=30, headers=headers), root

    def run(value: Any) -> str:
        # While the deciders come back a run is a 503 (nothing done): a client sends it again.
        response = wait_for(
            lambda: (
                (
                    r := user.post(f"/endpoints/{endpoint['id']}/run", json={"input": value})
                ).status_code
                != 503
                and r
            ),
            60,
            "the run to be taken",
        )
        assert response.status_code == 200, response.text
        job_id: str = response.json()["id"]
        return job_id

    held = run("held by a worker that vanishes")
    gone, gone_root = worker("w-gone")
    taken = gone.get(f"{gone_root}/job-take/w-gone?v=1")
    assert taken.json()["id"] == held
    queued = [run(k) for k in range(3)]

    pid = up.role_pid("deciders")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (p := up.role_pid("deciders")) is not None and p != pid, 60, "a new one")
    late = run("sent while it came back")

    heir, heir_root = worker("w-heir")
    order: list[str] = []
    deadline = time.monotonic() + 90
    while len(order) < 5 and time.monotonic() < deadline:
        response = heir.get(f"{heir_root}/job-take/w-heir?v=1")
        if response.status_code == 204:  # nothing yet (also while the dispatcher starts again)
            continue
        job = response.json()
        order.append(job["id"])
        done = heir.post(f"{heir_root}/job-done/w-heir/{job['id']}?v=1", json={"output": "ok"})
        assert done.status_code == 200, done.text
    # The queue's order survived; the vanished worker's job came back once it was found silent.
    assert [j for j in order if j != held] == [*queued, late], order
    assert held in order, order
    for job_id in order:
        shown = user.get(f"/endpoints/{endpoint['id']}/status/{job_id}").json()
        assert shown["status"] == "COMPLETED" and shown["workerId"] == "w-heir"
    # w-gone's late result is refused.
    refused = gone.post(f"{gone_root}/job-done/w-gone/{held}?v=1", json={"output": "late"})
    assert refused.status_code == 409
    for client in (user, gone, heir):
        client.close()
