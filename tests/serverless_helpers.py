"""Helpers for the serverless tests: an account with an API key, endpoints, worker environments and
real runpod SDK workers as subprocesses (tests/sdk_worker.py), all on loopback.

The serverless stack (tests/conftest.py `serverless_stack`) runs with short times: workers ping
every second and are lost after 3 s of silence, long polls are held 2 s, webhooks are retried
after half a second, and a receiver on 127.0.0.1 is allowed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import runpod

from services.security.worker_tokens import WorkerTokens
from services.worker_env import worker_env
from tests.api_helpers import signup
from tests.servers import Stack

SERVERLESS_ENV = {
    # These tests run their workers by hand (SDK workers, the example workers): no autoscaler
    # adds simulated ones beside them (tests/test_workers_*.py test it).
    "GPUWORKER_AUTOSCALER": "0",
    "GPUWORKER_WORKER_PING_INTERVAL": "1",
    "GPUWORKER_WORKER_LOST_AFTER": "3",
    "GPUWORKER_JOB_POLL_MAX": "2",
    "GPUWORKER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "GPUWORKER_WEBHOOK_RETRY_DELAY": "0.5",
}
GPU = "NVIDIA GeForce RTX 4090"
TEMPLATE = "busybox-smoke"
WORKER_SCRIPT = Path(__file__).with_name("sdk_worker.py")


def account(stack: Stack) -> tuple[str, httpx.Client]:
    """A new user's API key, and a client that sends it."""
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        response = client.post("/api-keys", json={"name": "sdk"})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key, stack.client(key)


@contextmanager
def runpod_sdk(stack: Stack) -> Iterator[tuple[str, httpx.Client]]:
    """The runpod SDK pointed at the stack with a fresh user's API key; the key and its http
    client."""
    key, client = account(stack)
    saved = (runpod.api_key, runpod.endpoint_url_base)
    runpod.api_key = key
    runpod.endpoint_url_base = f"{stack.url}/endpoints"
    try:
        yield key, client
    finally:
        runpod.api_key, runpod.endpoint_url_base = saved
        client.close()


def create_endpoint(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": f"ep-{uuid.uuid4().hex[:6]}", "templateId": TEMPLATE, "gpuIds": GPU, **fields}
    response = client.post("/endpoints", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def env_for(stack: Stack, endpoint: dict[str, Any], worker_id: str) -> dict[str, str]:
    return worker_env(
        stack.url,
        endpoint["id"],
        worker_id,
        endpoint["version"],
        WorkerTokens(stack.env["GPUWORKER_SECRET_KEY"]),
        int(stack.env.get("GPUWORKER_WORKER_PING_INTERVAL", "10")),
    )


def worker_client(stack: Stack, endpoint: dict[str, Any], worker_id: str) -> httpx.Client:
    """The worker protocol as a worker speaks it: its token raw in Authorization."""
    token = env_for(stack, endpoint, worker_id)["RUNPOD_AI_API_KEY"]
    return httpx.Client(base_url=stack.url, headers={"authorization": token}, timeout=30)


def worker_path(endpoint: dict[str, Any], route: str, worker_id: str, *rest: str) -> str:
    tail = "/".join((worker_id, *rest))
    return f"/worker/v1/{endpoint['id']}/{route}/{tail}?v={endpoint['version']}"


def run(client: httpx.Client, endpoint_id: str, job_input: Any, **fields: Any) -> str:
    response = client.post(f"/endpoints/{endpoint_id}/run", json={"input": job_input, **fields})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "IN_QUEUE"
    job_id: str = response.json()["id"]
    return job_id


def status(client: httpx.Client, endpoint_id: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/endpoints/{endpoint_id}/status/{job_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_status(
    client: httpx.Client,
    endpoint_id: str,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = status(client, endpoint_id, job_id)
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never got there: {found}")
        time.sleep(0.1)


class SdkWorker:
    """tests/sdk_worker.py in a session of its own (the SDK's ping runs in a child process):
    `kill()` is a SIGKILL of the whole group, as when its container dies."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, worker_id: str) -> None:
        self.process = process
        self.log = log
        self.worker_id = worker_id

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def sdk_worker(
    stack: Stack,
    endpoint: dict[str, Any],
    tmp: Path,
    worker_id: str | None = None,
    handler: str = "default",
) -> Iterator[SdkWorker]:
    worker_id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
    home = tmp / f"home-{worker_id}"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # No ~/.runpod credentials of this machine's user: the worker's own token only.
        "HOME": str(home),
        "PYTHONPATH": str(WORKER_SCRIPT.parent.parent),
        "GPUWORKER_TEST_HANDLER": handler,
        **env_for(stack, endpoint, worker_id),
    }
    log = tmp / f"{worker_id}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = SdkWorker(process, log, worker_id)
    try:
        yield worker
    finally:
        worker.stop()


def events_of(log: str) -> list[dict[str, Any]]:
    """The SDK's JSON log lines."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found
