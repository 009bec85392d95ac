"""Finding 5 (issue 7): 30 volumes of 4000 GB were accepted on a 252 GB host. A host reports its
disk when it registers (Docker: the file system of its data root; or what the operator declares),
and network volumes plus instance disks are not committed past it (times a configurable
overcommit ratio): a volume over capacity is a 409 that says so."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from events.catalog import decode_event
from events.host import HostRegistered
from services.agent.docker_runtime import DockerRuntime
from services.agent.runtime import GIB
from services.agent.simulated_runtime import SimulatedRuntime
from services.api.storage_capacity import fits
from services.deciders.host import HOST
from tests.api_helpers import assert_error, user_client, wait_for
from tests.docker_fixtures import docker_client  # noqa: F401
from tests.instance_helpers import RTX_4090, availability, instance_body, terminate
from tests.servers import Stack, running_stack
from tests.volume_helpers import create_volume, volume_body

HOST_DISK_GB = 300


async def test_docker_reports_the_disk_of_its_data_root(
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    runtime = DockerRuntime(f"t-disk-{uuid.uuid4().hex[:8]}", docker_client)
    root = docker_client.info()["DockerRootDir"]
    assert await runtime.storage_gb() == shutil.disk_usage(root).total // GIB
    assert await SimulatedRuntime("h", storage_gb=123).storage_gb() == 123
    assert await SimulatedRuntime("h").storage_gb() is None


def test_fits_counts_what_is_committed_times_the_ratio() -> None:
    assert fits(capacity_gb=100, committed_gb=60, more_gb=40, overcommit=1.0)
    assert not fits(capacity_gb=100, committed_gb=60, more_gb=41, overcommit=1.0)
    assert fits(capacity_gb=100, committed_gb=60, more_gb=90, overcommit=1.5)
    assert fits(capacity_gb=None, committed_gb=10**6, more_gb=4000, overcommit=1.0)


@pytest.fixture(scope="module")
def small_disk_stack(tmp_path_factory: pytest.TempPathFactory, pg_base_uri: str) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_DISK_GB", str(HOST_DISK_GB))
        tmp: Path = tmp_path_factory.mktemp("small-disk")
        with running_stack(tmp, pg_base_uri, gpus=f"{RTX_4090}:4") as stack:
            yield stack


def test_volumes_and_instance_disks_stop_at_the_hosts_disk(small_disk_stack: Stack) -> None:
    with user_client(small_disk_stack) as client, user_client(small_disk_stack) as other:
        wait_for(lambda: availability(client, RTX_4090)[1] == 4, 30, "the host's GPUs")
        create_volume(client, size=200)
        # 200 + 200 > 300: refused, whoever asks, with the sizes in the message.
        for who in (client, other):
            message = assert_error(who.post("/volumes", json=volume_body(size=200)), 409)
            assert "200 GB" in message and "storage" in message, message
        create_volume(other, size=50)
        # An instance's own disks count too: 20 + 50 more would pass 300.
        response = client.post(
            "/instances", json=instance_body(containerDiskInGb=20, volumeInGb=50)
        )
        assert_error(response, 409, "disk")
        created = client.post("/instances", json=instance_body(containerDiskInGb=20, volumeInGb=0))
        assert created.status_code == 201, created.text
        # 200 + 50 + 20 committed: a 40 GB volume no longer fits, a 30 GB one does.
        assert_error(client.post("/volumes", json=volume_body(size=40)), 409, "storage")
        create_volume(client, size=30)
        terminate(client, created.json()["id"])


def test_host_registered_v1_reads_back_with_an_unknown_disk() -> None:
    stamp = "2026-11-02T10:00:00Z"
    raw = json.dumps(
        {
            "id": "0190f1e2-4444-7000-8000-000000000003",
            "type": "HostRegistered",
            "version": 1,
            "aggregate": {"type": "host", "id": "h-old"},
            "occurred_at": stamp,
            "recorded_at": stamp,
            "actor": "system:agent:h-old",
            "correlation_id": "corr-1",
            "data": {
                "datacenter_id": "US-TX-3",
                "cloud_type": "SECURE",
                "gpus": [],
                "inventory_source": "declared",
                "runtime": "docker",
            },
        }
    ).encode()
    envelope = decode_event(raw)
    assert envelope.version == 2
    assert isinstance(envelope.data, HostRegistered) and envelope.data.disk_gb is None
    state = HOST.evolve(None, envelope)
    assert state.disk_gb is None
    # An unknown disk is not checked: anything fits.
    assert fits(state.disk_gb, 10**6, 4000, 1.0)
