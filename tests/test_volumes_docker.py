"""Network volumes on real Docker: one dedicated `gpuworker up --runtime docker` stack (declared
inventory of 2 RTX 4090, no real GPU needed) whose agent runs under a host id of its own.

A network volume is a Docker named volume `gpuworker-vol-<id>` on the volume's host. Instances
that mount it see the same files, it survives their stop, start and termination, and it goes only
when the volume is deleted. Everything the stack's host left on the engine (containers and volumes
labelled `gpuworker.host=<host id>`) is removed afterwards. No Docker engine is a failure, never a
skip (tests/docker_fixtures.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from services.agent.runtime import LABEL_HOST
from tests.api_helpers import user_client, wait_for
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401
from tests.instance_helpers import (
    BUSYBOX_TEMPLATE,
    RTX_4090,
    availability,
    create_instance,
    start_when_released,
    terminate,
    wait_available,
    wait_status,
)
from tests.servers import Stack, running_stack
from tests.volume_helpers import VOLUME_DATACENTER, create_volume, wait_volume, wait_volume_gone

GPUS = "NVIDIA GeForce RTX 4090:2"
# Real containers take longer than simulated ones.
UP_S = 30.0


@pytest.fixture(scope="module")
def docker_volume_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[tuple[Stack, str]]:
    host_id = f"t-volumes-{uuid.uuid4().hex[:8]}"
    tmp: Path = tmp_path_factory.mktemp("docker-volumes")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_ID", host_id)
        try:
            with running_stack(tmp, pg_base_uri, runtime="docker", gpus=GPUS) as stack:
                yield stack, host_id
        finally:
            clean_host(docker_client, host_id)


@pytest.fixture
def client(docker_volume_stack: tuple[Stack, str]) -> Iterator[httpx.Client]:
    stack, _host = docker_volume_stack
    with user_client(stack) as c:
        wait_for(lambda: availability(c, RTX_4090)[1] == 2, 30, "the host's 2 RTX 4090")
        yield c


def _docker_volume(client: docker.DockerClient, name: str) -> Any:
    try:
        return client.volumes.get(name)
    except docker.errors.NotFound:
        return None


def _container(client: docker.DockerClient, instance_id: str) -> Any:
    return client.containers.get(f"gpuworker-{instance_id}")


def _container_gone(client: docker.DockerClient, instance_id: str) -> bool:
    try:
        _container(client, instance_id)
    except docker.errors.NotFound:
        return True
    return False


def _sh(container: Any, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output
    return bytes(output).decode().strip()


def _running_on(
    client: httpx.Client, engine: docker.DockerClient, volume_id: str, host_id: str
) -> tuple[str, Any]:
    """An instance mounting the volume, RUNNING in a real container with the volume at
    /workspace."""
    created = create_instance(client, templateId=BUSYBOX_TEMPLATE, networkVolumeId=volume_id)
    instance_id = created["id"]
    assert created["networkVolumeId"] == volume_id
    assert created["hostId"] == host_id
    assert created["dataCenterId"] == VOLUME_DATACENTER
    wait_status(client, instance_id, "RUNNING", UP_S)
    container = _container(engine, instance_id)
    assert container.status == "running"
    mounts = {m.get("Name"): m["Destination"] for m in container.attrs["Mounts"]}
    assert mounts.get(f"gpuworker-vol-{volume_id}") == "/workspace", container.attrs["Mounts"]
    return instance_id, container


def test_a_network_volume_outlives_its_instances(
    docker_volume_stack: tuple[Stack, str],
    client: httpx.Client,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    _stack, host_id = docker_volume_stack
    volume_id = create_volume(client, size=20)["id"]
    name = f"gpuworker-vol-{volume_id}"

    # The storage host makes a Docker named volume for it, labelled with its host.
    wait_volume(client, volume_id, UP_S, status="AVAILABLE")
    docker_volume = wait_for(lambda: _docker_volume(docker_client, name), UP_S, name)
    assert docker_volume.attrs["Labels"][LABEL_HOST] == host_id

    # Instance A writes a file on it.
    a, container = _running_on(client, docker_client, volume_id, host_id)
    _sh(container, "echo hello > /workspace/data.txt")
    assert _sh(container, "cat /workspace/data.txt") == "hello"

    # Stop and start A: the file is still there.
    response = client.post(f"/instances/{a}/stop")
    assert response.status_code == 200, response.text
    wait_status(client, a, "STOPPED", UP_S)
    wait_available(client, RTX_4090, 2)
    response = start_when_released(client, a)
    assert response.status_code == 200, response.text
    wait_status(client, a, "RUNNING", UP_S)
    assert _sh(_container(docker_client, a), "cat /workspace/data.txt") == "hello"

    # Terminate A: its container goes, the volume stays (and stays attached to nothing).
    terminate(client, a, UP_S)
    wait_for(lambda: _container_gone(docker_client, a), UP_S, f"container of {a} removed")
    wait_volume(client, volume_id, UP_S, attachedInstances=[])
    assert _docker_volume(docker_client, name) is not None, f"{name} went with instance {a}"

    # Instance B, on the same volume, reads what A wrote.
    b, container = _running_on(client, docker_client, volume_id, host_id)
    assert _sh(container, "cat /workspace/data.txt") == "hello"
    terminate(client, b, UP_S)
    wait_for(lambda: _container_gone(docker_client, b), UP_S, f"container of {b} removed")
    assert _docker_volume(docker_client, name) is not None, f"{name} went with instance {b}"

    # Delete the volume: it goes from the API, then from Docker.
    wait_volume(client, volume_id, UP_S, attachedInstances=[])
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    wait_volume_gone(client, volume_id, UP_S)
    wait_for(lambda: _docker_volume(docker_client, name) is None, UP_S, f"{name} removed")


def test_a_volume_deleted_before_use_leaves_nothing(
    docker_volume_stack: tuple[Stack, str],
    client: httpx.Client,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    """Deleted at once, while the storage host may still be making it: nothing is left behind."""
    volume_id = create_volume(client)["id"]
    name = f"gpuworker-vol-{volume_id}"
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    wait_volume_gone(client, volume_id, UP_S)
    wait_for(lambda: _docker_volume(docker_client, name) is None, UP_S, f"{name} removed")
