"""TCP ports of an instance: published on the host's public address at a host port of their own,
shown as `publicIp` + `portMappings`, stable across stop and start; HTTP ports never published
there (they are reached through the proxy, which checks who asks). And the decider keeps out of
the instance's record any reported port the instance did not declare."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from typing import Any

import docker
import pytest

from events.container import ContainerConfig
from events.instance import InstancePortsPublished, InstanceRunning, PublishedPort
from services.agent.host_ports import NoFreeHostPort, choose_host_ports, reserved_in
from services.agent.runtime import HostPort
from services.deciders.instance import InstanceState, ReportObservation, decide
from tests.docker_fixtures import docker_client  # noqa: F401
from tests.instance_helpers import start_when_released, wait_status
from tests.security.conftest import SecurityStack
from tests.security.reach_helpers import HTTPD_COMMAND, HTTPD_PORTS, UP_S, running_instance

HOST = "host-1"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _pong(ip: str, port: int) -> bytes:
    with socket.create_connection((ip, port), timeout=10) as conn:
        return conn.recv(100)


def _answers(ip: str, port: int) -> bytes:
    for _ in range(50):
        try:
            if reply := _pong(ip, port):
                return reply
        except OSError:
            pass
        time.sleep(0.2)
    return b""


def test_tcp_ports_are_mapped_on_the_public_address_and_stay_across_stop_and_start(
    security_stack: SecurityStack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with (
        security_stack.tenant() as client,
        running_instance(client, "local/busybox:latest", HTTPD_COMMAND, HTTPD_PORTS) as running,
    ):
        instance_id = running["id"]
        assert running["publicIp"] == "127.0.0.1"
        mappings = running["portMappings"]
        assert set(mappings) == {"2222"}  # the http port is the proxy's, not a mapping
        assert _answers("127.0.0.1", mappings["2222"]) == b"pong\n"
        # Docker really publishes the http port on the private address only (127.0.0.1 here,
        # like the public one under `gpuworker up`), at a fixed host port.
        container = docker_client.containers.get(f"gpuworker-{instance_id}")
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert bindings["2222/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(mappings["2222"])}]
        assert bindings["8080/tcp"][0]["HostPort"] != ""

        assert client.post(f"/instances/{instance_id}/stop").status_code == 200
        stopped = wait_status(client, instance_id, "STOPPED", UP_S)
        assert stopped["portMappings"] is None and stopped["publicIp"] is None
        assert start_when_released(client, instance_id).status_code == 200
        again = wait_status(client, instance_id, "RUNNING", UP_S)

        assert again["portMappings"] == mappings
        assert _answers("127.0.0.1", mappings["2222"]) == b"pong\n"


def _state(**changes: Any) -> InstanceState:
    fields: dict[str, Any] = {
        "id": "i-1",
        "owner_id": "u-1",
        "name": "n",
        "gpu_type_id": "NVIDIA GeForce RTX 4090",
        "gpu_count": 1,
        "cloud_type": "SECURE",
        "datacenter_id": "US-TX-3",
        "host_id": HOST,
        "gpu_uuids": ["GPU-1"],
        "lease_id": "lease-1",
        "template_id": "t",
        "container": ContainerConfig(image_name="x", ports=["8888/http", "22/tcp"]),
        "network_volume_id": None,
        "price_per_hour_micros": 1,
        "rate_card_version": "v1",
        "status": "PROVISIONING",
        "desired_status": "RUNNING",
        "created_at": NOW,
        "last_status_change": NOW,
    }
    return InstanceState(**{**fields, **changes})


def _running(ports: list[PublishedPort], public_ip: str | None = "127.0.0.1") -> ReportObservation:
    return ReportObservation(
        actor=f"system:agent:{HOST}",
        at=NOW,
        observed="running",
        lease_id="lease-1",
        public_ip=public_ip,
        ports=ports,
    )


def test_the_decider_records_only_declared_ports_at_real_addresses() -> None:
    """The proxy connects where these say: a report naming an undeclared port, a host name or a
    port out of range must not put it on the instance."""
    good = [
        PublishedPort(port="22/tcp", host_ip="127.0.0.1", host_port=20022),
        PublishedPort(port="8888/http", host_ip="127.0.0.1", host_port=20888),
    ]
    bad = [
        PublishedPort(port="2375/tcp", host_ip="127.0.0.1", host_port=2375),
        PublishedPort(port="8888/http", host_ip="metadata.internal", host_port=80),
        PublishedPort(port="22/tcp", host_ip="127.0.0.1", host_port=70000),
    ]

    events = decide(_state(), _running(bad + good))

    assert events == [
        InstanceRunning(),
        InstancePortsPublished(public_ip="127.0.0.1", ports=sorted(good, key=lambda p: p.port)),
    ]
    # Not an address: not recorded (nothing new to say, then).
    assert decide(_state(), _running([], public_ip="not an address")) == [InstanceRunning()]


def test_a_running_instance_records_ports_only_when_they_moved() -> None:
    ports = [PublishedPort(port="22/tcp", host_ip="127.0.0.1", host_port=20022)]
    running = _state(status="RUNNING", public_ip="127.0.0.1", published_ports=ports)

    assert decide(running, _running(ports)) == []
    moved = [PublishedPort(port="22/tcp", host_ip="127.0.0.1", host_port=20023)]
    assert decide(running, _running(moved)) == [
        InstancePortsPublished(public_ip="127.0.0.1", ports=moved)
    ]
    # A report without ports (an older agent) says nothing about them.
    plain = ReportObservation(actor=f"system:agent:{HOST}", at=NOW, observed="running")
    assert decide(running, plain) == []


def test_host_ports_keep_what_was_asked_for_when_free_and_never_reuse_a_reserved_one() -> None:
    taken = {20001}
    free = lambda _ip, port, _proto: port not in {20003}  # noqa: E731

    chosen = choose_host_ports(
        {
            "22/tcp": HostPort(host_ip="127.0.0.1", host_port=20002),
            "8888/tcp": HostPort(host_ip="127.0.0.1", host_port=20001),
        },
        taken,
        (20001, 20004),
        free,
    )

    assert chosen["22/tcp"].host_port == 20002
    assert chosen["8888/tcp"].host_port == 20004  # 20001 reserved, 20002 taken now, 20003 busy
    with pytest.raises(NoFreeHostPort):
        choose_host_ports(
            {"22/tcp": HostPort(host_ip="127.0.0.1")}, {20001, 20002}, (20001, 20002), free
        )
    # Reservations come from our own label only; an image's label is blanked by the runtime.
    assert reserved_in([{"gpuworker.ports": "22/tcp=20005,8888/tcp=x"}, {}]) == {20005}
