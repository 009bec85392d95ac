"""A host whose agent goes silent is marked lost: its GPUs stop counting as available and its
instances say so; when the agent is back, so is the host."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Stack, agent_command, running_stack

HOST = f"loss-{uuid.uuid4().hex[:6]}"
GPU = "NVIDIA L40S"


@pytest.fixture
def stack_without_agent(tmp_path: Path, pg_base_uri: str) -> Iterator[Stack]:
    os.environ["GPUWORKER_AGENT"] = "0"
    os.environ["GPUWORKER_HOST_TIMEOUT"] = "3"
    try:
        with running_stack(tmp_path, pg_base_uri) as s:
            yield s
    finally:
        del os.environ["GPUWORKER_AGENT"], os.environ["GPUWORKER_HOST_TIMEOUT"]


def start_agent(stack: Stack) -> subprocess.Popen[bytes]:
    stack.nats.add_agent(HOST)
    env = {**stack.env, "GPUWORKER_HEARTBEAT": "0.5"}
    return subprocess.Popen(
        agent_command("simulated", f"{GPU}:2", HOST),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def availability(client: httpx.Client) -> int:
    types = {t["id"]: t for t in client.get("/gpu-types").raise_for_status().json()}
    return sum(a["available"] for a in types[GPU]["availability"])


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_silent_host_is_lost_and_comes_back(stack_without_agent: Stack) -> None:
    stack = stack_without_agent
    with stack.client() as anon:
        token = anon.post(
            "/auth/signup",
            json={"name": "Ops", "email": f"{HOST}@example.com", "password": "p" * 12},
        ).json()["access_token"]
    agent = start_agent(stack)
    try:
        with stack.client(token) as c:
            wait_for(lambda: availability(c) == 2)
            created = c.post(
                "/instances",
                json={"name": "w", "gpuTypeId": GPU, "templateId": "busybox-smoke"},
            )
            assert created.status_code == 201, created.text
            instance_id = created.json()["id"]
            wait_for(lambda: c.get(f"/instances/{instance_id}").json()["status"] == "RUNNING")
            assert c.get(f"/instances/{instance_id}").json()["hostLost"] is False
            # The allocation lives in the hosts read model, which the create does not wait for.
            wait_for(lambda: availability(c) == 1)

            agent.send_signal(signal.SIGKILL)
            agent.wait()
            wait_for(lambda: c.get(f"/instances/{instance_id}").json()["hostLost"] is True)
            assert availability(c) == 0, "a lost host's free GPUs are not offered"
            refused = c.post(
                "/instances", json={"name": "x", "gpuTypeId": GPU, "templateId": "busybox-smoke"}
            )
            assert refused.status_code == 409
            assert "no capacity" in refused.json()["error"]["message"]

            agent = start_agent(stack)
            wait_for(lambda: c.get(f"/instances/{instance_id}").json()["hostLost"] is False)
            # The simulated runtime's containers lived in the killed agent: the new agent finds
            # none, reports the instance EXITED, and its GPU comes back.
            wait_for(lambda: c.get(f"/instances/{instance_id}").json()["status"] == "EXITED")
            exited = c.get(f"/instances/{instance_id}").json()
            assert "disappeared" in exited["failureReason"]
            assert "start" in exited["actions"]
            wait_for(lambda: availability(c) == 2)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
