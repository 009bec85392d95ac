"""One `gpuworker up --runtime docker` stack for the security suite (declared inventory, no real
GPU), whose agent runs under a host id of its own so everything it leaves on the engine can be
found and removed afterwards. Tenants are fresh users; each test terminates what it made.

Beside it runs a test registry on 127.0.0.1 (tests/registry_server.py) holding Alice's private
image, which the stack's operator allows by name (`GPUWORKER_ALLOWED_REGISTRIES`)."""

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
from tests.docker_fixtures import build_image, busybox_image, docker_client  # noqa: F401
from tests.instance_helpers import RTX_4090, availability
from tests.registry_server import TestRegistry
from tests.servers import Stack, running_stack

GPUS = f"{RTX_4090}:4"
ALICE_REPOSITORY = "alice/private"
ALICE_PASSWORD = f"alice-{uuid.uuid4().hex}"
SECRET = f"alice-secret-{uuid.uuid4().hex[:8]}"
PROXY_CONNECTIONS_PER_USER = 4
LOG_STREAMS_PER_USER = 2
PROXY_IDLE_TIMEOUT_S = 5


class PrivateImage:
    """Alice's image in the test registry: only her credential may pull it."""

    def __init__(self, registry: TestRegistry, source: str, digest: str) -> None:
        self.registry = registry
        self.source = source
        self.reference = f"{registry.address}/{ALICE_REPOSITORY}:1"
        self.digest = digest
        self.username = "alice"
        self.password = ALICE_PASSWORD


class SecurityStack:
    def __init__(self, stack: Stack, host_id: str, private: PrivateImage) -> None:
        self.stack = stack
        self.host_id = host_id
        self.private = private

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
def private_image(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[PrivateImage]:
    """A registry serving Alice's image (a file only she should read), built here and removed
    from the engine again, so that only a pull brings it onto the host."""
    source = build_image(
        docker_client,
        f"local/alice-source-{uuid.uuid4().hex[:8]}:1",
        f"RUN echo {SECRET} > /secret",
    )
    registry = TestRegistry().start()
    try:
        digest = registry.push(
            docker_client, source, ALICE_REPOSITORY, "1", readers={"alice": ALICE_PASSWORD}
        )
        docker_client.images.remove(source)
        yield PrivateImage(registry, source, digest)
    finally:
        registry.stop()
        for image in docker_client.images.list(name=f"{registry.address}/{ALICE_REPOSITORY}"):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image.id, force=True)


@pytest.fixture(scope="session")
def security_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    private_image: PrivateImage,
) -> Iterator[SecurityStack]:
    host_id = f"t-security-{uuid.uuid4().hex[:8]}"
    # The stack's processes read these once, at start; the rest of the session must not see them.
    env = pytest.MonkeyPatch()
    env.setenv("GPUWORKER_HOST_ID", host_id)
    env.setenv("GPUWORKER_ALLOWED_REGISTRIES", private_image.registry.address)
    env.setenv("GPUWORKER_PRELOADED_IMAGES", "local/*")
    # Small enough for the instance proxy's and logs' limits to be reached in a test.
    env.setenv("GPUWORKER_PROXY_CONNECTIONS_PER_USER", str(PROXY_CONNECTIONS_PER_USER))
    env.setenv("GPUWORKER_LOG_STREAMS_PER_USER", str(LOG_STREAMS_PER_USER))
    env.setenv("GPUWORKER_PROXY_IDLE_TIMEOUT", str(PROXY_IDLE_TIMEOUT_S))
    try:
        with running_stack(
            tmp_path_factory.mktemp("security"), pg_base_uri, runtime="docker", gpus=GPUS
        ) as stack:
            env.undo()
            yield SecurityStack(stack, host_id, private_image)
    finally:
        env.undo()
        clean_host(docker_client, host_id)
