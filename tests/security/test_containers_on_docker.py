"""Finding 5 (issue 7) through the API on real Docker: an instance's container gets the vCPUs and
RAM its GPUs rent with (rate card), the host's limits, and its owner's own network, which no other
tenant's container can reach; an instance that writes past its disk is stopped with the reason
(1.3 GB once went into a 1 GB volume unnoticed).

Addresses on Docker's bridges are discovered from `docker inspect` while the test runs, never
written here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import httpx
import pytest

from services.agent.runtime import LABEL_INSTANCE
from tests.api_helpers import template_body, user_client, wait_for
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401
from tests.instance_helpers import (
    BUSYBOX_TEMPLATE,
    RTX_4090,
    availability,
    create_instance,
    terminate,
    wait_status,
)
from tests.servers import Stack, running_stack

GPUS = f"{RTX_4090}:4"
UP_S = 30.0
HTTP_PORT = 8080


@pytest.fixture(scope="module")
def docker_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[Stack]:
    host_id = f"t-contain-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_ID", host_id)
        env.setenv("GPUWORKER_DISK_CHECK_INTERVAL", "1")
        try:
            with running_stack(
                tmp_path_factory.mktemp("contain"), pg_base_uri, runtime="docker", gpus=GPUS
            ) as stack:
                yield stack
        finally:
            clean_host(docker_client, host_id)


@contextmanager
def _client(stack: Stack) -> Iterator[httpx.Client]:
    with user_client(stack) as client:
        wait_for(lambda: availability(client, RTX_4090)[1] == 4, 30, "the host's 4 RTX 4090")
        yield client


def _container(client: docker.DockerClient, instance_id: str) -> Any:
    found = client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance_id}"})
    assert len(found) == 1, found
    return found[0]


def _address(container: Any) -> str:
    networks: dict[str, Any] = container.attrs["NetworkSettings"]["Networks"]
    assert len(networks) == 1, networks
    (settings,) = networks.values()
    address = str(settings["IPAddress"])
    assert address, networks
    return address


def _fetch(container: Any, address: str) -> tuple[int, str]:
    """GET / from `address` inside `container` (busybox nc: this host's static busybox wget
    crashes on any address but loopback)."""
    request = "busybox printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    code, output = container.exec_run(
        ["sh", "-c", f"{request} | busybox nc -w 3 {address} {HTTP_PORT}"]
    )
    return int(code), bytes(output).decode(errors="replace")


def test_an_instance_gets_its_gpus_cpu_and_memory_and_the_hosts_limits(
    docker_stack: Stack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with _client(docker_stack) as client:
        gpu_types = {g["id"]: g for g in client.get("/gpu-types").json()}
        assert gpu_types[RTX_4090]["vcpuPerGpu"] == 16
        assert gpu_types[RTX_4090]["ramInGbPerGpu"] == 62
        created = create_instance(client, templateId=BUSYBOX_TEMPLATE, gpuCount=2)
        try:
            assert created["vcpuCount"] == 32 and created["memoryInGb"] == 124, created
            assert client.get(f"/instances/{created['id']}").json()["vcpuCount"] == 32
            wait_status(client, created["id"], "RUNNING", UP_S)
            container = _container(docker_client, created["id"])
            host_config = container.attrs["HostConfig"]
            assert host_config["Memory"] == 124 * 2**30
            assert host_config["MemorySwap"] == host_config["Memory"]
            # 32 vCPUs on a host with fewer: all of the host's, which Docker accepts.
            cpus = min(32, int(docker_client.info()["NCPU"]))
            assert host_config["NanoCpus"] == cpus * 1_000_000_000
            assert host_config["PidsLimit"] == 4096
            assert host_config["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}
            assert "NET_RAW" in {c.removeprefix("CAP_") for c in host_config["CapDrop"]}
            assert any(o.startswith("no-new-privileges") for o in host_config["SecurityOpt"])
        finally:
            terminate(client, created["id"], UP_S)


def _web_template(client: httpx.Client, greeting: str) -> str:
    """A template whose container serves `greeting` over HTTP on HTTP_PORT."""
    start = (
        f"busybox mkdir -p /www && echo {greeting} > /www/index.html"
        f" && exec busybox httpd -f -p {HTTP_PORT} -h /www"
    )
    response = client.post(
        "/templates",
        json=template_body(
            imageName="local/busybox:latest", dockerStartCmd=start, containerDiskInGb=1
        ),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_tenants_cannot_reach_each_other(
    docker_stack: Stack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with _client(docker_stack) as alice, _client(docker_stack) as bob:
        made: list[tuple[httpx.Client, str]] = []
        try:
            for client, greeting in ((alice, "alice-1"), (alice, "alice-2"), (bob, "bob-1")):
                template = _web_template(client, greeting)
                made.append((client, create_instance(client, templateId=template)["id"]))
            for client, instance_id in made:
                wait_status(client, instance_id, "RUNNING", UP_S)
            alice_1, alice_2, bob_1 = (_container(docker_client, i) for _, i in made)

            def serving(container: Any) -> bool:
                return "200 OK" in _fetch(container, "127.0.0.1")[1]

            wait_for(lambda: serving(alice_1) and serving(bob_1), 10, "httpd up")

            # Alice's two containers share her network and talk.
            code, output = _fetch(alice_2, _address(alice_1))
            assert code == 0 and "200 OK" in output and "alice-1" in output, output
            # Bob's is on his own network: unreachable from Alice's, and the other way round.
            code, output = _fetch(alice_2, _address(bob_1))
            assert code != 0 and "bob-1" not in output, output
            code, output = _fetch(bob_1, _address(alice_1))
            assert code != 0 and "alice-1" not in output, output
            network_of = {
                c.name: next(iter(c.attrs["NetworkSettings"]["Networks"]))
                for c in (alice_1, alice_2, bob_1)
            }
            assert network_of[alice_1.name] == network_of[alice_2.name] != network_of[bob_1.name]
            assert network_of[bob_1.name].startswith("gpuworker-net-")
        finally:
            for client, instance_id in made:
                terminate(client, instance_id, UP_S)


def test_an_instance_over_its_disk_is_stopped_with_the_reason(
    docker_stack: Stack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with _client(docker_stack) as client:
        on_volume = create_instance(
            client, templateId=BUSYBOX_TEMPLATE, containerDiskInGb=5, volumeInGb=1
        )
        on_layer = create_instance(client, templateId=BUSYBOX_TEMPLATE, containerDiskInGb=1)
        try:
            for instance in (on_volume, on_layer):
                wait_status(client, instance["id"], "RUNNING", UP_S)
            # 1.2 GiB each: into the 1 GB volume, and into the 1 GB container layer. `dd` may
            # be cut short by the stop; either way the instance must end FAILED.
            for instance, path in ((on_volume, "/workspace/big"), (on_layer, "/big")):
                _container(docker_client, instance["id"]).exec_run(
                    ["busybox", "dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1200"],
                    detach=True,
                )
            failed = wait_status(client, on_volume["id"], "FAILED", 60)
            reason = failed["failureReason"]
            assert "volumeInGb" in reason and "/workspace" in reason, reason
            assert "limit of 1 GB" in reason, reason
            failed = wait_status(client, on_layer["id"], "FAILED", 60)
            reason = failed["failureReason"]
            assert "containerDiskInGb" in reason and "limit of 1 GB" in reason, reason
            # Stopped for real, and the GPUs are free again.
            boxes = [_container(docker_client, i["id"]) for i in (on_volume, on_layer)]
            wait_for(lambda: all(_exited(c) for c in boxes), 15, "the containers stopped")
            wait_for(lambda: availability(client, RTX_4090)[0] == 4, 15, "GPUs given back")
        finally:
            for instance in (on_volume, on_layer):
                terminate(client, instance["id"], UP_S)


def _exited(container: Any) -> bool:
    container.reload()
    return str(container.status) == "exited"
