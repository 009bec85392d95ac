"""One `gpuworker up --runtime docker` stack for the security suite (declared inventory, no real
GPU), whose agent runs under a host id of its own so everything it leaves on the engine can be
found and removed afterwards. Tenants are fresh users; each test terminates what it made."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import httpx
import pytest

from services.agent.runtime import LABEL_HOST
from tests.api_helpers import user_client, wait_for
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401
from tests.instance_helpers import RTX_4090, availability
from tests.servers import Stack, running_stack

GPUS = f"{RTX_4090}:4"


class SecurityStack:
    def __init__(self, stack: Stack, host_id: str) -> None:
        self.stack = stack
        self.host_id = host_id

    @contextlib.contextmanager
    def tenant(self) -> Iterator[httpx.Client]:
        """A client for a brand-new user, once the host's GPUs are registered."""
        with user_client(self.stack) as client:
            wait_for(lambda: availability(client, RTX_4090)[1] == 4, 30, "the host's 4 RTX 4090")
            yield client


def clean_host(client: docker.DockerClient, host_id: str) -> None:
    label = f"{LABEL_HOST}={host_id}"
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


@pytest.fixture(scope="session")
def security_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[SecurityStack]:
    host_id = f"t-security-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_ID", host_id)
        try:
            with running_stack(
                tmp_path_factory.mktemp("security"), pg_base_uri, runtime="docker", gpus=GPUS
            ) as stack:
                yield SecurityStack(stack, host_id)
        finally:
            clean_host(docker_client, host_id)
