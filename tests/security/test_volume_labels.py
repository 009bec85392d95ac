"""Finding 1 (issue 7): an image's `gpuworker.*` labels must not make the runtime delete, or even
touch, anything that is not the instance's own. Real Docker, through the API as a customer would."""

from __future__ import annotations

import contextlib
import uuid

import docker
import docker.errors

from services.agent.runtime import LABEL_HOST, LABEL_INSTANCE
from tests.api_helpers import template_body, wait_for
from tests.docker_fixtures import (  # noqa: F401
    BUSYBOX_IMAGE,
    build_image,
    docker_client,
    volume_exists,
)
from tests.instance_helpers import create_instance, terminate, wait_status
from tests.security.conftest import SecurityStack
from tests.volume_helpers import create_volume, get_volume, wait_volume

UP_S = 30.0
# The label an older runtime read to find the volume to delete with a container.
LABEL_VOLUME = "gpuworker.volume"


def _volume_text(client: docker.DockerClient, name: str, path: str) -> str:
    """What a file in a Docker volume holds, read by a throwaway container."""
    output = client.containers.run(
        BUSYBOX_IMAGE, ["cat", f"/v/{path}"], volumes={name: {"bind": "/v"}}, remove=True
    )
    return bytes(output).decode().strip()


def test_an_image_label_cannot_delete_another_tenants_volume(
    security_stack: SecurityStack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with security_stack.tenant() as alice, security_stack.tenant() as bob:
        # Bob's network volume, with his data on it.
        volume_id = create_volume(bob, size=10)["id"]
        wait_volume(bob, volume_id, UP_S, status="AVAILABLE")
        name = f"gpuworker-vol-{volume_id}"
        wait_for(lambda: volume_exists(docker_client, name), UP_S, name)
        docker_client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", "echo bob > /v/marker"],
            volumes={name: {"bind": "/v"}},
            remove=True,
        )

        # Alice's image claims Bob's volume (and another instance and host) as its own.
        image = build_image(
            docker_client,
            f"local/hostile-{uuid.uuid4().hex[:10]}:1",
            f"LABEL {LABEL_VOLUME}={name} {LABEL_INSTANCE}=i-not-me {LABEL_HOST}=not-this-host",
        )
        try:
            response = alice.post(
                "/templates",
                json=template_body(imageName=image, dockerStartCmd="sleep 3600", volumeInGb=0),
            )
            assert response.status_code == 201, response.text
            created = create_instance(alice, templateId=response.json()["id"], volumeInGb=0)
            wait_status(alice, created["id"], "RUNNING", UP_S)
            container = docker_client.containers.get(f"gpuworker-{created['id']}")
            # The runtime's own labels win over the image's.
            assert container.labels[LABEL_INSTANCE] == created["id"]
            assert container.labels[LABEL_HOST] == security_stack.host_id
            assert container.labels.get(LABEL_VOLUME, "") != name

            terminate(alice, created["id"], UP_S)
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.images.remove(image, force=True)

        # Bob's volume is still there, with his data, and still his.
        assert volume_exists(docker_client, name), f"{name} was deleted"
        assert _volume_text(docker_client, name, "marker") == "bob"
        assert get_volume(bob, volume_id)["status"] == "AVAILABLE"
