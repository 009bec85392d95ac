"""Instances on real Docker containers: dedicated `gpuworker up --runtime docker` stacks with a
declared (simulated) inventory of 2 RTX 4090.

Each stack's agent has a host id of its own, so its containers and volumes (labelled
`gpuworker.host=<id>`) can be found and cleaned up without touching anything else on this engine.
No Docker engine is a failure, never a skip (tests/docker_fixtures.py)."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from services.agent.host_agent import own_disk_name
from services.agent.runtime import LABEL_HOST, LABEL_INSTANCE, LABEL_MANAGED
from tests.api_helpers import template_body, user_client, wait_for
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401
from tests.instance_helpers import (
    BUSYBOX_TEMPLATE,
    RTX_4090,
    availability,
    create_instance,
    get_instance,
    start_when_released,
    terminate,
    wait_available,
    wait_status,
)
from tests.servers import Stack, agent_command, running_stack

GPUS = "NVIDIA GeForce RTX 4090:2"
REPO = Path(__file__).resolve().parents[1]
# Real containers take longer than simulated ones.
UP_S = 30.0


def _host_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def docker_stack(
    tmp: Path,
    pg_base_uri: str,
    client: docker.DockerClient,
    host_id: str,
    with_agent: bool = True,
) -> Iterator[Stack]:
    """`gpuworker up --runtime docker` whose agent (if any) runs as `host_id`."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_ID", host_id)
        if not with_agent:
            env.setenv("GPUWORKER_AGENT", "0")
        try:
            with running_stack(tmp, pg_base_uri, runtime="docker", gpus=GPUS) as stack:
                yield stack
        finally:
            clean_host(client, host_id)


def _containers(client: docker.DockerClient, instance_id: str) -> list[Any]:
    return list(
        client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={instance_id}"}, ignore_removed=True
        )
    )


def _container(client: docker.DockerClient, instance_id: str) -> Any:
    found = _containers(client, instance_id)
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def _volumes(client: docker.DockerClient, instance_id: str) -> list[Any]:
    return list(client.volumes.list(filters={"label": f"{LABEL_INSTANCE}={instance_id}"}))


def _exec(container: Any, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output
    return bytes(output).decode().strip()


@pytest.fixture(scope="module")
def shared_docker_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[tuple[Stack, str]]:
    """One docker stack for the lifecycle and pull-failure tests of this module."""
    host_id = _host_id("t-docker")
    with docker_stack(
        tmp_path_factory.mktemp("docker-stack"), pg_base_uri, docker_client, host_id
    ) as s:
        yield s, host_id


@pytest.fixture
def client(shared_docker_stack: tuple[Stack, str]) -> Iterator[httpx.Client]:
    stack, _host = shared_docker_stack
    with user_client(stack) as c:
        wait_for(lambda: availability(c, RTX_4090)[1] == 2, 30, "the host's 2 RTX 4090")
        yield c


def test_instance_lifecycle_on_docker(
    shared_docker_stack: tuple[Stack, str],
    client: httpx.Client,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    _stack, host_id = shared_docker_stack
    created = create_instance(client, templateId=BUSYBOX_TEMPLATE, volumeInGb=10)
    instance_id = created["id"]
    try:
        assert created["hostId"] == host_id
        assert created["imageName"] == "local/busybox:latest"
        assert created["volumeInGb"] == 10
        wait_status(client, instance_id, "RUNNING", UP_S)

        # A real container, labelled with the instance and its host, with no GPU device requests:
        # the declared inventory's UUIDs are made up and no driver knows them.
        container = _container(docker_client, instance_id)
        assert container.status == "running"
        assert container.labels[LABEL_INSTANCE] == instance_id
        assert container.labels[LABEL_HOST] == host_id
        assert container.labels[LABEL_MANAGED] == "true"
        assert not container.attrs["HostConfig"].get("DeviceRequests")
        wait_for(lambda: b"ready" in container.logs(), 10, "the start command's output")

        # The instance's disk is a named volume mounted at the volume mount path.
        volumes = _volumes(docker_client, instance_id)
        assert len(volumes) == 1, volumes
        mounts = {m.get("Name"): m["Destination"] for m in container.attrs["Mounts"]}
        assert mounts.get(volumes[0].name) == "/workspace", container.attrs["Mounts"]
        _exec(container, "echo hi > /workspace/f")

        # Stop: the container exits and stays; the GPU goes back.
        response = client.post(f"/instances/{instance_id}/stop")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "STOPPING"
        stopped = wait_status(client, instance_id, "STOPPED", UP_S)
        assert stopped["actions"] == ["start", "terminate"]
        container.reload()
        assert container.status == "exited"
        wait_available(client, RTX_4090, 2)

        # Start: the same disk comes back with the file on it.
        response = start_when_released(client, instance_id)
        assert response.status_code == 200, response.text
        wait_status(client, instance_id, "RUNNING", UP_S)
        container = _container(docker_client, instance_id)
        assert container.status == "running"
        assert _exec(container, "cat /workspace/f") == "hi"

        # Restart: a fresh start of the same container.
        started_before = container.attrs["State"]["StartedAt"]
        response = client.post(f"/instances/{instance_id}/restart")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "RESTARTING"
        wait_status(client, instance_id, "RUNNING", UP_S)
        container = _container(docker_client, instance_id)
        assert container.status == "running"
        assert container.attrs["State"]["StartedAt"] != started_before

        # Killed from outside: the instance EXITED with the container's exit code; GPU released.
        container.kill()
        exited = wait_status(client, instance_id, "EXITED", 15)
        assert exited["exitCode"] == 137, exited
        assert exited["failureReason"], exited
        assert "start" in exited["actions"] and "terminate" in exited["actions"]
        assert exited["desiredStatus"] == "RUNNING"
        wait_available(client, RTX_4090, 2)

        response = start_when_released(client, instance_id)
        assert response.status_code == 200, response.text
        running = wait_status(client, instance_id, "RUNNING", UP_S)
        assert running["exitCode"] is None and running["failureReason"] is None
        container = _container(docker_client, instance_id)
        assert container.status == "running"
        assert _exec(container, "cat /workspace/f") == "hi"

        # A new env recreates the container on the same disk.
        response = client.patch(f"/instances/{instance_id}", json={"env": {"GREETING": "hello"}})
        assert response.status_code == 200, response.text

        def recreated() -> Any:
            found = _containers(docker_client, instance_id)
            if len(found) != 1 or found[0].status != "running":
                return None
            env = found[0].attrs["Config"]["Env"] or []
            return found[0] if "GREETING=hello" in env else None

        container = wait_for(recreated, UP_S, "the container recreated with the new env")
        assert _exec(container, "echo $GREETING; cat /workspace/f") == "hello\nhi"
        assert get_instance(client, instance_id)["status"] == "RUNNING"
    finally:
        response = client.delete(f"/instances/{instance_id}")
    assert response.status_code == 204, response.text

    # Terminated: 404, and the container and its volume are gone.
    terminate(client, instance_id, UP_S)
    wait_for(lambda: not _containers(docker_client, instance_id), 15, "the container removed")
    wait_for(lambda: not _volumes(docker_client, instance_id), 15, "the volume removed")
    wait_available(client, RTX_4090, 2)


def test_unpullable_image_fails_and_gives_the_gpu_back(
    shared_docker_stack: tuple[Stack, str],
    client: httpx.Client,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    response = client.post(
        "/templates",
        json=template_body(imageName="local/does-not-exist:1", dockerStartCmd="sleep 60"),
    )
    assert response.status_code == 201, response.text
    template_id = response.json()["id"]
    assert wait_available(client, RTX_4090, 2) == (2, 2)

    created = create_instance(client, templateId=template_id)
    instance_id = created["id"]
    try:
        failed = wait_status(client, instance_id, "FAILED", UP_S)
        assert "pull" in failed["failureReason"], failed
        assert "local/does-not-exist:1" in failed["failureReason"], failed
        assert "start" in failed["actions"] and "terminate" in failed["actions"]
        assert not _containers(docker_client, instance_id)
        # Its GPU is free again.
        wait_for(lambda: availability(client, RTX_4090) == (2, 2), 15, "the GPU given back")
    finally:
        terminate(client, instance_id, UP_S)
    assert not _containers(docker_client, instance_id)


# -- agent restart ----------------------------------------------------------------------------


class AgentProcess:
    """`gpuworker agent --runtime docker` run by the test, so it can be killed and restarted."""

    def __init__(self, stack: Stack, host_id: str, log_path: Path) -> None:
        self.stack = stack
        self.host_id = host_id
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.stack.nats.add_agent(self.host_id)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                agent_command("docker", GPUS, self.host_id),
                env=self.stack.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, times: int, timeout: float = 30.0) -> None:
        marker = f"agent {self.host_id} ready"

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.logs()
            return self.logs().count(marker) >= times

        wait_for(ready, timeout, f"agent ready ({times})")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def _leftover(client: docker.DockerClient, image: str, host_id: str, named: bool) -> Any:
    """A running managed container of an instance no event knows of."""
    instance_id = str(uuid.uuid4())
    return client.containers.run(
        image,
        ["sleep", "3600"],
        name=f"gpuworker-{instance_id}" if named else None,
        labels={LABEL_MANAGED: "true", LABEL_INSTANCE: instance_id, LABEL_HOST: host_id},
        detach=True,
    )


def _removed(container: Any) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return True
    return False


def test_restarted_agent_reconciles_with_docker(
    tmp_path: Path,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    host_id = _host_id("t-agent")
    with docker_stack(tmp_path, pg_base_uri, docker_client, host_id, with_agent=False) as stack:
        agent = AgentProcess(stack, host_id, tmp_path / "agent.log")
        try:
            with user_client(stack) as client:
                # `up` ran no agent: the host appears only once ours registers it.
                assert availability(client, RTX_4090) == (0, 0)
                agent.start()
                agent.wait_ready(1)
                wait_for(lambda: availability(client, RTX_4090) == (2, 2), 15, "2 free GPUs")

                keep = create_instance(client, templateId=BUSYBOX_TEMPLATE)
                gone = create_instance(client, templateId=BUSYBOX_TEMPLATE)
                for created in (keep, gone):
                    assert created["hostId"] == host_id
                    wait_status(client, created["id"], "RUNNING", UP_S)
                keep_container = _container(docker_client, keep["id"])

                # The agent dies; behind its back one container is removed and a left-over
                # managed container of an instance nobody knows appears.
                agent.kill()
                _container(docker_client, gone["id"]).remove(force=True)
                # One named as the runtime names its own containers (an earlier life of this
                # agent left it), one with the managed labels alone and a name Docker chose
                # (anyone can put labels on a container: that one is not ours).
                named = _leftover(docker_client, busybox_image, host_id, named=True)
                unnamed = _leftover(docker_client, busybox_image, host_id, named=False)
                # The left-over's own disk: nothing names its instance, which is not proof
                # that it is gone (a WORK stream made again says nothing yet), so it stays.
                disk = docker_client.volumes.create(
                    own_disk_name(named.labels[LABEL_INSTANCE]), labels={LABEL_HOST: host_id}
                )
                assert get_instance(client, gone["id"])["status"] == "RUNNING"

                agent.start()
                agent.wait_ready(2)
                exited = wait_status(client, gone["id"], "EXITED", 20)
                assert "disappeared" in exited["failureReason"], exited
                assert "start" in exited["actions"]

                wait_for(lambda: _removed(named), 20, "the left-over container removed")
                disk.reload()  # raises NotFound had the agent deleted it
                disk.remove()

                # The untouched instance kept its container, still running.
                assert get_instance(client, keep["id"])["status"] == "RUNNING"
                still = _container(docker_client, keep["id"])
                assert still.id == keep_container.id and still.status == "running"

                # The exited one starts again on a new container.
                response = start_when_released(client, gone["id"])
                assert response.status_code == 200, response.text
                wait_status(client, gone["id"], "RUNNING", UP_S)
                assert _container(docker_client, gone["id"]).status == "running"

                for created in (keep, gone):
                    terminate(client, created["id"], UP_S)
                # Labels alone do not make a container ours: the agent left it alone.
                assert not _removed(unnamed), f"{unnamed.name} (labels only) was removed"
                unnamed.remove(force=True)
                label = f"{LABEL_HOST}={host_id}"
                assert not docker_client.containers.list(all=True, filters={"label": label})
        finally:
            code = agent.terminate()
        assert code == 0, agent.logs()
        assert "gpuworker.agent" not in stack.logs()
