"""Finding 8 (issue 7), second half: one customer must not drive the agent into a hot loop.

A create Docker refuses used to be retried at once on every `destroy` event Docker sent for the
half-made container (1,233 attempts in 27 s, the GPU held in PROVISIONING). Now the agent checks a
spec before Docker sees it, backs off between attempts, and after a few reports the instance FAILED
with a reason, which frees its GPU."""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import time

import docker
import docker.errors
import pytest
from nats.aio.client import Client as NatsClient

from services.agent.runtime import LABEL_INSTANCE
from services.cli.embedded import EmbeddedNats
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401
from tests.security.agent_harness import (
    create_instance,
    docker_events,
    host_id,
    running_agent,
    wait_instance,
)

# An image with no shell: every start of `sh -c CMD` fails inside Docker (exec: "sh": not found).
NO_SHELL_IMAGE = "local/gpuworker-test-no-shell:1"


@pytest.fixture(scope="module")
def no_shell_image(docker_client: docker.DockerClient) -> str:  # noqa: F811
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"no shell in here\n"
        info = tarfile.TarInfo("README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repository, _, tag = NO_SHELL_IMAGE.rpartition(":")
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return NO_SHELL_IMAGE


async def test_a_mount_path_docker_refuses_fails_at_once_without_a_loop(
    nats_server: EmbeddedNats,
    nc: NatsClient,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = host_id("t-backoff")
    since = time.time()
    caplog.set_level(logging.INFO, logger="gpuworker.agent")
    async with running_agent(nats_server, nc, docker_client, host) as (runner, _agent):
        instance_id = await create_instance(
            runner, host, image_name=busybox_image, volume_in_gb=1, volume_mount_path="/x:/y"
        )
        failed = await wait_instance(runner, instance_id, "FAILED", 10)
        assert failed.failure_reason and "volumeMountPath" in failed.failure_reason, failed
        assert failed.lease_id is None and failed.gpu_uuids == [], "the GPU is given back"
        await asyncio.sleep(1.0)  # anything still looping would show now
        assert (await wait_instance(runner, instance_id, "FAILED", 0)).version == failed.version
    # The agent refused the spec itself: Docker never saw a create for this instance.
    events = await asyncio.to_thread(
        docker_events, docker_client, since, f"{LABEL_INSTANCE}={instance_id}"
    )
    assert events == [], [e.get("Action") for e in events]
    lines = [r for r in caplog.records if instance_id in r.getMessage()]
    assert len(lines) <= 3, [r.getMessage() for r in lines]


async def test_a_container_docker_cannot_start_fails_after_bounded_attempts(
    nats_server: EmbeddedNats,
    nc: NatsClient,
    docker_client: docker.DockerClient,  # noqa: F811
    no_shell_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = host_id("t-backoff")
    since = time.time()
    caplog.set_level(logging.INFO, logger="gpuworker.agent")
    agent = running_agent(nats_server, nc, docker_client, host, resync_s=0.5)
    async with agent as (runner, _agent):
        instance_id = await create_instance(runner, host, image_name=no_shell_image)
        started = time.monotonic()
        failed = await wait_instance(runner, instance_id, "FAILED", 20)
        elapsed = time.monotonic() - started
        assert failed.failure_reason, failed
        assert "3 attempts" in failed.failure_reason, failed.failure_reason
        # The customer sees what to fix, not the daemon's raw error text.
        assert "OCI" not in failed.failure_reason and "shim" not in failed.failure_reason
        assert failed.lease_id is None and failed.gpu_uuids == []
        # Backed off between attempts (1 s, then 2 s), yet done within seconds.
        assert 2.5 < elapsed < 15, elapsed
        await asyncio.sleep(2.0)  # a resync every 0.5 s must not try again
    # Each start attempt connects the container to a network once: count them.
    container_ids = {
        e["Actor"]["ID"]
        for e in await asyncio.to_thread(
            docker_events, docker_client, since, f"{LABEL_INSTANCE}={instance_id}"
        )
        if e.get("Action") == "create"
    }
    assert len(container_ids) == 1, container_ids
    connects = [
        e
        for e in await asyncio.to_thread(docker_events, docker_client, since, "", "network")
        if e.get("Action") == "connect"
        and e["Actor"]["Attributes"].get("container") in container_ids
    ]
    assert len(connects) == 3, len(connects)
    lines = [r for r in caplog.records if instance_id in r.getMessage()]
    assert len(lines) <= 8, [r.getMessage() for r in lines]
