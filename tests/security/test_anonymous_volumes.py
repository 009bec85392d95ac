"""Finding 9 (issue 7): data an instance writes into its image's `VOLUME`s must not outlive the
instance, while a network volume mounted over such a path must. Real Docker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import docker.errors
import pytest

from services.agent.docker_runtime import DockerRuntime, container_name
from services.agent.runtime import ContainerSpec
from tests.docker_fixtures import (  # noqa: F401
    BUSYBOX_IMAGE,
    build_image,
    docker_client,
    volume_exists,
)


@pytest.fixture
async def runtime(
    docker_client: docker.DockerClient,  # noqa: F811
) -> AsyncIterator[DockerRuntime]:
    made = DockerRuntime(f"t-anon-{uuid.uuid4().hex[:8]}", docker_client)
    yield made
    await made.close()


@pytest.fixture
def image_with_volumes(
    docker_client: docker.DockerClient,  # noqa: F811
) -> Iterator[str]:
    tag = f"local/anon-volumes-{uuid.uuid4().hex[:10]}:1"
    build_image(docker_client, tag, "VOLUME /data", "VOLUME /workspace")
    yield tag
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        docker_client.images.remove(tag, force=True)


def _sh(client: docker.DockerClient, instance_id: str, script: str) -> str:
    code, output = client.containers.get(container_name(instance_id)).exec_run(["sh", "-c", script])
    assert code == 0, output
    return bytes(output).decode().strip()


def _volume_at(client: docker.DockerClient, instance_id: str, path: str) -> str:
    mounts = client.containers.get(container_name(instance_id)).attrs["Mounts"]
    (name,) = [m["Name"] for m in mounts if m["Destination"] == path]
    return str(name)


async def test_anonymous_volumes_go_with_the_instance(
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,  # noqa: F811
    image_with_volumes: str,
) -> None:
    spec = ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}", image=image_with_volumes, command="sleep 3600"
    )
    await runtime.create_and_start(spec)
    await asyncio.to_thread(_sh, docker_client, spec.instance_id, "echo secret > /data/f")
    anonymous = await asyncio.to_thread(_volume_at, docker_client, spec.instance_id, "/data")
    assert await asyncio.to_thread(volume_exists, docker_client, anonymous)

    await runtime.remove(spec.instance_id)

    assert not await asyncio.to_thread(volume_exists, docker_client, anonymous), (
        f"anonymous volume {anonymous} (the image's VOLUME /data) outlived its instance"
    )


async def test_a_network_volume_over_an_image_volume_survives(
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,  # noqa: F811
    image_with_volumes: str,
) -> None:
    network = f"gpuworker-vol-test-{uuid.uuid4().hex[:12]}"
    await runtime.ensure_volume(network, {})
    spec = ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}",
        image=image_with_volumes,
        command="sleep 3600",
        volume_name=network,
        volume_mount_path="/workspace",
    )
    try:
        await runtime.create_and_start(spec)
        await asyncio.to_thread(_sh, docker_client, spec.instance_id, "echo kept > /workspace/f")
        assert await asyncio.to_thread(_volume_at, docker_client, spec.instance_id, "/workspace")
        anonymous = await asyncio.to_thread(_volume_at, docker_client, spec.instance_id, "/data")

        await runtime.remove(spec.instance_id)

        assert not await asyncio.to_thread(volume_exists, docker_client, anonymous)
        assert await asyncio.to_thread(volume_exists, docker_client, network)
        output = await asyncio.to_thread(
            docker_client.containers.run,
            BUSYBOX_IMAGE,
            ["cat", "/v/f"],
            volumes={network: {"bind": "/v"}},
            remove=True,
        )
        assert bytes(output).decode().strip() == "kept"
    finally:
        await runtime.remove_volume(network)
