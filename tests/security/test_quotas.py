"""Finding 5 (issue 7): one user could hold every GPU and create volumes and templates without end.
Per-user quotas come from configuration (GPUWORKER_QUOTA_*); a create or start over a quota is a
409 in the seed's shape naming the quota and its limit, and concurrent creates cannot slip past
it together."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.api_helpers import assert_error, template_body, user_client
from tests.instance_helpers import (
    RTX_4090,
    create_instance,
    instance_body,
    start_when_released,
    terminate,
    wait_status,
)
from tests.servers import Stack, running_stack
from tests.volume_helpers import create_volume, volume_body

QUOTAS = {
    "GPUWORKER_QUOTA_GPUS": "2",
    "GPUWORKER_QUOTA_VOLUMES": "2",
    "GPUWORKER_QUOTA_VOLUME_GB": "50",
    "GPUWORKER_QUOTA_TEMPLATES": "3",
}


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory, pg_base_uri: str) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in QUOTAS.items():
            env.setenv(name, value)
        tmp: Path = tmp_path_factory.mktemp("quotas")
        with running_stack(tmp, pg_base_uri, gpus=f"{RTX_4090}:8") as stack:
            yield stack


def test_gpus_held_at_once(quota_stack: Stack) -> None:
    with user_client(quota_stack) as client:
        first = create_instance(client, gpuCount=2)
        message = assert_error(client.post("/instances", json=instance_body()), 409, "GPU")
        assert "2" in message and "quota" in message.lower(), message
        # Stopping gives the GPUs back: a new instance fits, and then the old one cannot start.
        assert client.post(f"/instances/{first['id']}/stop").status_code == 200
        wait_status(client, first["id"], "STOPPED")
        second = create_instance(client, gpuCount=1)
        response = start_when_released(client, first["id"])
        assert_error(response, 409, "GPU", "quota")
        terminate(client, second["id"])
        assert start_when_released(client, first["id"]).status_code == 200
        terminate(client, first["id"])
    # Another user has a quota of their own.
    with user_client(quota_stack) as other:
        terminate(other, create_instance(other, gpuCount=2)["id"])


def test_concurrent_creates_do_not_pass_the_gpu_quota_together(quota_stack: Stack) -> None:
    with user_client(quota_stack) as client:

        def create(_: int) -> int:
            response = client.post("/instances", json=instance_body(gpuCount=1))
            return response.status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            codes = list(pool.map(create, range(6)))
        assert sorted(codes) == [201, 201, 409, 409, 409, 409], codes
        held = [i for i in client.get("/instances").json() if i["status"] != "TERMINATED"]
        assert sum(i["gpuCount"] for i in held) == 2
        for instance in held:
            terminate(client, instance["id"])


def test_volumes_count_and_size(quota_stack: Stack) -> None:
    with user_client(quota_stack) as client:
        first = create_volume(client, size=20)
        create_volume(client, size=20)
        message = assert_error(client.post("/volumes", json=volume_body(size=10)), 409, "volume")
        assert "2" in message and "quota" in message.lower(), message
        # Growing past the total is refused too.
        response = client.patch(f"/volumes/{first['id']}", json={"size": 40})
        assert_error(response, 409, "50 GB", "quota")
        assert client.patch(f"/volumes/{first['id']}", json={"size": 30}).status_code == 200
        # A deleted volume no longer counts.
        assert client.delete(f"/volumes/{first['id']}").status_code == 202
        assert_error(client.post("/volumes", json=volume_body(size=31)), 409, "50 GB")
        create_volume(client, size=30)


def test_templates(quota_stack: Stack) -> None:
    with user_client(quota_stack) as client:
        made = []
        for _ in range(3):
            response = client.post("/templates", json=template_body())
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        message = assert_error(client.post("/templates", json=template_body()), 409, "template")
        assert "3" in message and "quota" in message.lower(), message
        assert client.delete(f"/templates/{made[0]}").status_code == 204
        response = client.post("/templates", json=template_body(name=f"t-{uuid.uuid4().hex}"))
        assert response.status_code == 201, response.text
