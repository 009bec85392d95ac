"""Finding 8 (issue 7), first half: a mount path or a port Docker would refuse never gets past the
API. `volumeMountPath: "/x:/y"` used to pass and put the agent into a hot loop; `99999/tcp` passed
too. Templates and instances, on create and on change, answer 400 naming the field."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import docker
import httpx
import pytest

from services.agent.docker_runtime import DockerRuntime
from services.agent.runtime import ContainerSpec, InvalidContainerSpec, Runtime
from services.agent.simulated_runtime import SimulatedRuntime
from services.container_input import mount_path_problem, ports_problem
from tests.api_helpers import assert_error, template_body, user_client
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401
from tests.instance_helpers import instance, instance_body
from tests.servers import Stack

BAD_MOUNT_PATHS = [
    "/x:/y",
    "/data:ro",
    "relative",
    "",
    "/",
    "//",
    "/a//b",
    "/a/../etc",
    "/..",
    "/a/./b",
    "/a/.",
    "/data/",
    "/proc",
    "/proc/self",
    "/sys/fs",
    "/dev",
    "/etc",
    "/etc/ssh",
    "/usr/local",
    "/bin",
    "/lib",
    "/lib64",
    "/sbin",
    "/boot",
    "/run",
    "/var/run",
    "/var/run/docker.sock",
    "/a b",
    "/a\tb",
    "/a\x00b",
    "/" + "a" * 300,
]
GOOD_MOUNT_PATHS = ["/workspace", "/data", "/home/jovyan/work", "/mnt/disk-1", "/var/lib/data"]

BAD_PORTS = [
    ["99999/tcp"],
    ["65536/tcp"],
    ["0/tcp"],
    ["00080/tcp"],
    ["80/ftp"],
    ["80/sctp"],
    ["80"],
    ["/tcp"],
    ["80/tcp", "80/tcp"],
    ["8888/http", "8888/tcp"],
    ["-1/udp"],
]
GOOD_PORTS = [["1/tcp"], ["65535/udp"], ["8888/http", "22/tcp", "53/udp", "53/tcp"]]


@pytest.mark.parametrize("path", BAD_MOUNT_PATHS)
def test_bad_mount_paths_are_named(path: str) -> None:
    problem = mount_path_problem(path)
    assert problem, f"{path!r} passed"


@pytest.mark.parametrize("path", GOOD_MOUNT_PATHS)
def test_good_mount_paths_pass(path: str) -> None:
    assert mount_path_problem(path) is None


@pytest.mark.parametrize("ports", BAD_PORTS)
def test_bad_ports_are_named(ports: list[str]) -> None:
    assert ports_problem(ports), f"{ports!r} passed"


@pytest.mark.parametrize("ports", GOOD_PORTS)
def test_good_ports_pass(ports: list[str]) -> None:
    assert ports_problem(ports) is None


API_MOUNT_PATHS = ["/x:/y", "/a/../etc", "/a//b", "/", "/proc", "/etc/ssh", "/var/run", "/data/"]
API_PORTS = [["99999/tcp"], ["0/udp"], ["8888/http", "8888/tcp"], ["22/tcp", "22/tcp"]]


def _creates_are_refused(client: httpx.Client, url: str, body: Callable[..., Any]) -> None:
    for path in API_MOUNT_PATHS:
        response = client.post(url, json=body(volumeMountPath=path))
        assert_error(response, 400, "field `volumeMountPath`")
    for ports in API_PORTS:
        assert_error(client.post(url, json=body(ports=ports)), 400, "field `ports`")


def test_templates_refuse_bad_mount_paths_and_ports(stack: Stack) -> None:
    with user_client(stack) as client:
        _creates_are_refused(client, "/templates", template_body)
        created = client.post("/templates", json=template_body())
        assert created.status_code == 201, created.text
        url = f"/templates/{created.json()['id']}"
        for path in API_MOUNT_PATHS:
            assert_error(client.patch(url, json={"volumeMountPath": path}), 400, "volumeMountPath")
        for ports in API_PORTS:
            assert_error(client.patch(url, json={"ports": ports}), 400, "field `ports`")
        # Nothing was changed by the refused patches.
        assert client.get(url).json()["volumeMountPath"] == "/workspace"


def test_instances_refuse_bad_mount_paths_and_ports(stack: Stack) -> None:
    with user_client(stack) as client:
        _creates_are_refused(client, "/instances", instance_body)
        # None of them holds a GPU or shows up.
        assert client.get("/instances").json() == []
        with instance(client) as created:
            url = f"/instances/{created['id']}"
            for ports in API_PORTS:
                assert_error(client.patch(url, json={"ports": ports}), 400, "field `ports`")
            assert client.get(url).json()["ports"] == created["ports"]


async def test_both_runtimes_refuse_a_bad_spec_before_creating_anything(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    host = f"t-spec-{uuid.uuid4().hex[:8]}"
    runtimes: list[Runtime] = [
        DockerRuntime(host, docker_client, pull_timeout_s=5),
        SimulatedRuntime(host),
    ]
    bad: list[dict[str, Any]] = [
        {"volume_name": f"gpuworker-{host}-disk", "volume_mount_path": "/x:/y"},
        {"volume_name": f"gpuworker-{host}-disk", "volume_mount_path": "/proc"},
        {"ports": ["99999/tcp"]},
        {"ports": ["22/tcp", "22/tcp"]},
    ]
    for runtime in runtimes:
        for fields in bad:
            spec = ContainerSpec(instance_id=str(uuid.uuid4()), image=busybox_image, **fields)
            with pytest.raises(InvalidContainerSpec, match="field `"):
                await runtime.create_and_start(spec)
            assert (await runtime.inspect(spec.instance_id)).status == "missing"
            assert not await runtime.volume_exists(f"gpuworker-{host}-disk")
        await runtime.close()
