"""An agent in this process, on real NATS (logged in as its host's agent) and real Docker, with
the deciders it reports to.

The tests here write an instance's events through the deciders directly, the way an event written
before today's API checks (or by a buggy writer) would reach an agent, and watch what the agent
does with it on a real Docker engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import msgspec
from nats.aio.client import Client as NatsClient

from events.container import CONTAINER_FIELDS, ContainerConfig
from events.host import HostGpu
from events.ids import new_id
from events.store import JetStreamEventStore
from services.agent.docker_runtime import DockerRuntime
from services.agent.host_agent import HostAgent, HostSpec
from services.agent.runtime import Runtime
from services.api.command_bus import CommandBus
from services.cli.embedded import EmbeddedNats
from services.deciders.catalog import DECIDERS
from services.deciders.instance import CreateInstance, InstanceState
from services.nats_permissions import agent_user
from services.processes.host_work_router import HostWorkRouter
from services.processes.runner import DeciderRunner
from services.processes.server import DeciderServer
from services.security.host_keys import HostKeys, host_key
from services.security.secret_box import generate_key
from tests.docker_fixtures import clean_host
from tests.servers import connect_as

GPU = "NVIDIA GeForce RTX 4090"
DATACENTER = "US-TX-3"


def host_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def running_agent(
    nats_server: EmbeddedNats,
    nc: NatsClient,
    client: docker.DockerClient,
    host: str,
    gpus: int = 2,
    runtime: Runtime | None = None,
    **agent_options: Any,
) -> AsyncIterator[tuple[DeciderRunner, HostAgent]]:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    runner = DeciderRunner(store, DECIDERS)
    server = DeciderServer(nc, runner, {})
    await server.start()
    # The host's work reaches its agent as the deciders publish it, sealed with its own key.
    master = generate_key()
    router = HostWorkRouter(nc, store, master)
    await router.start()
    agent_options.setdefault("keys", HostKeys(host, host_key(master, host)))
    # The agent logs in as its host's agent, which may report only about that host.
    nats_server.add_agent(host)
    agent_nc = await connect_as(nats_server, agent_user(host))
    spec = HostSpec(
        host_id=host,
        datacenter_id=DATACENTER,
        cloud_type="SECURE",
        inventory_source="declared",
        gpus=[
            HostGpu(index=i, uuid=f"GPU-{host}-{i}", gpu_type_id=GPU, memory_mb=24564)
            for i in range(gpus)
        ],
    )
    agent = HostAgent(
        host,
        agent_nc,
        CommandBus(agent_nc, 10.0),
        [spec],
        runtime or DockerRuntime(host, client, pull_timeout_s=5),
        **agent_options,
    )
    await agent.start()
    try:
        yield runner, agent
    finally:
        await agent.stop()
        await agent_nc.close()
        await router.stop()
        await server.stop()
        await asyncio.to_thread(clean_host, client, host)


async def create_instance(
    runner: DeciderRunner, host: str, owner: str = "user-1", **fields: Any
) -> str:
    """An instance on `host` as placement would create it (GPU index 0), written to the deciders
    without the API's checks; `fields` replace the defaults (the container's among them)."""
    instance_id = new_id()
    container: dict[str, Any] = {
        "image_name": "local/busybox:latest",
        "docker_start_cmd": "sleep 3600",
        "env": {},
        "ports": [],
        "container_disk_in_gb": 1,
        "volume_in_gb": 0,
        "volume_mount_path": "/workspace",
    }
    container.update({k: fields.pop(k) for k in CONTAINER_FIELDS if k in fields})
    command: dict[str, Any] = {
        "actor": owner,
        "at": datetime.now(UTC),
        "name": "t",
        "gpu_type_id": GPU,
        "gpu_count": 1,
        "cloud_type": "SECURE",
        "datacenter_id": DATACENTER,
        "host_id": host,
        "gpu_uuids": [f"GPU-{host}-0"],
        "lease_id": new_id(),
        "template_id": "busybox-smoke",
        "container": msgspec.convert(container, ContainerConfig),
        "network_volume_id": None,
        "price_per_hour_micros": 690_000,
        "rate_card_version": "2026-11-30",
        "vcpu_count": 1,
        "memory_in_gb": 1,
        **fields,
    }
    reply = await runner.run("instance", instance_id, CreateInstance(**command), "t")
    assert reply.error is None, reply.error
    return instance_id


async def instance_state(runner: DeciderRunner, instance_id: str) -> InstanceState:
    state, _seq = await runner.current("instance", instance_id)
    assert isinstance(state, InstanceState)
    return state


async def wait_instance(
    runner: DeciderRunner, instance_id: str, status: str, timeout: float
) -> InstanceState:
    deadline = time.monotonic() + timeout
    while True:
        state = await instance_state(runner, instance_id)
        if state.status == status:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"instance {instance_id} not {status} in {timeout} s: {state}")
        await asyncio.sleep(0.1)


def docker_events(
    client: docker.DockerClient, since: float, label: str, kind: str = "container"
) -> list[dict[str, Any]]:
    """Docker's events of `kind` with `label` from `since` until now."""
    return list(
        client.events(
            since=since,
            until=time.time(),
            decode=True,
            filters={"type": kind, "label": label} if kind == "container" else {"type": kind},
        )
    )
