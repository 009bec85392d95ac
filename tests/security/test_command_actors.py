"""The deciders believe a command's actor only from the sender entitled to it (issue 7, finding 4):
a `system:` actor on the api's subjects is refused, an agent reports only as itself and only
about its own host, and operators' commands come only on theirs. This is the issue's attack
(`StopInstance` as `system:anyone`) and its variants, sent through a real deciders server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from events.host import HostGpu
from events.ids import new_id
from events.store import JetStreamEventStore
from events.subjects import agent_command_subject, operator_command_subject
from services.api.command_bus import CommandBus
from services.cli.embedded import EmbeddedNats
from services.deciders.blog import PublishPost
from services.deciders.catalog import DECIDERS
from services.deciders.host import RegisterHost
from services.deciders.instance import (
    CreateInstance,
    InstanceState,
    ReportObservation,
    StopInstance,
)
from services.errors import Forbidden, GpuWorkerError, NotFound
from services.nats_permissions import API_USER, OPERATOR_USER, agent_user
from services.processes.runner import DeciderRunner
from services.processes.server import DeciderServer
from tests.fleet_strategies import place_instance
from tests.servers import connect_as

BOB = "0190f1e2-0000-7000-8000-0000000000b0"
GPU = "NVIDIA GeForce RTX 4090"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deciders:
    runner: DeciderRunner
    server: EmbeddedNats
    clients: list[NatsClient]

    async def bus(self, user: str) -> CommandBus:
        client = await connect_as(self.server, user)
        self.clients.append(client)
        return CommandBus(client, timeout_s=5)

    async def instance_on(self, host_id: str) -> str:
        """Bob's instance, placed on `host_id` (as placement would create it)."""
        instance_id = new_id()
        fields = msgspec.structs.asdict(place_instance(BOB, GPU, 1, "US-TX-3", "SECURE"))
        del fields["hosts_without_disk"]  # placement's own, not the instance's
        reply = await self.runner.run(
            "instance",
            instance_id,
            CreateInstance(
                **fields, host_id=host_id, gpu_uuids=[f"GPU-{host_id}"], lease_id=new_id()
            ),
            "t",
        )
        assert reply.error is None, reply.error
        return instance_id

    async def instance(self, instance_id: str) -> InstanceState:
        state, _seq = await self.runner.current("instance", instance_id)
        assert isinstance(state, InstanceState)
        return state


@pytest.fixture
async def deciders(nc: NatsClient, nats_server: EmbeddedNats) -> AsyncIterator[Deciders]:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    runner = DeciderRunner(store, DECIDERS)
    server = DeciderServer(nc, runner)
    await server.start()
    running = Deciders(runner, nats_server, [])
    yield running
    await server.stop()
    for client in running.clients:
        await client.close()


def register(host_id: str, actor: str) -> RegisterHost:
    return RegisterHost(
        actor=actor,
        at=now(),
        datacenter_id="US-TX-3",
        cloud_type="SECURE",
        gpus=[HostGpu(index=0, uuid=f"GPU-{host_id}", gpu_type_id=GPU, memory_mb=24564)],
        inventory_source="declared",
        runtime="simulated",
    )


async def test_a_system_actor_on_the_api_subject_is_refused(deciders: Deciders) -> None:
    instance_id = await deciders.instance_on("h1")
    api = await deciders.bus(API_USER)
    with pytest.raises(Forbidden, match="system"):
        await api.send("instance", instance_id, StopInstance(actor="system:anyone", at=now()), "t")
    with pytest.raises(Forbidden):
        await api.send(
            "instance",
            instance_id,
            ReportObservation(actor="system:agent:h1", at=now(), observed="failed"),
            "t",
        )
    assert (await deciders.instance(instance_id)).status == "PENDING"
    # Another user is told the instance does not exist; its owner may stop it.
    with pytest.raises(NotFound):
        await api.send("instance", instance_id, StopInstance(actor=new_id(), at=now()), "t")
    reply = await api.send("instance", instance_id, StopInstance(actor=BOB, at=now()), "t")
    assert reply.error is None


async def test_the_api_cannot_register_hosts_even_as_a_user(deciders: Deciders) -> None:
    api = await deciders.bus(API_USER)
    with pytest.raises(Forbidden):
        await api.send("host", "h9", register("h9", BOB), "t")
    state, _seq = await deciders.runner.current("host", "h9")
    assert state is None


async def test_an_agent_reports_only_as_itself_about_its_own_host(deciders: Deciders) -> None:
    deciders.server.add_agent("h1")
    agent = await deciders.bus(agent_user("h1"))
    own = await deciders.instance_on("h1")
    others = await deciders.instance_on("h2")

    def report(actor: str) -> ReportObservation:
        return ReportObservation(actor=actor, at=now(), observed="failed", reason="x")

    on_own_subject = agent_command_subject("h1", "instance")
    # Another host's actor, on this host's subject.
    with pytest.raises(Forbidden, match="system:agent:h2"):
        await agent.send_on(on_own_subject, others, report("system:agent:h2"), "t")
    # Its own actor, about an instance on another host: that instance does not exist for it.
    with pytest.raises(NotFound):
        await agent.send_on(on_own_subject, others, report("system:agent:h1"), "t")
    assert (await deciders.instance(others)).status == "PENDING"
    # Reports only: an agent does not stop instances, even its own host's.
    with pytest.raises(Forbidden):
        await agent.send_on(
            on_own_subject, own, StopInstance(actor="system:agent:h1", at=now()), "t"
        )
    # A host registers only itself.
    with pytest.raises(Forbidden):
        await agent.send_on(
            agent_command_subject("h1", "host"), "h2", register("h2", "system:agent:h1"), "t"
        )
    # What it may do, it does.
    reply = await agent.send_on(
        agent_command_subject("h1", "host"), "h1", register("h1", "system:agent:h1"), "t"
    )
    assert reply.error is None
    await agent.send_on(on_own_subject, own, report("system:agent:h1"), "t")
    assert (await deciders.instance(own)).status == "FAILED"


async def test_operators_publish_as_the_cli_on_their_own_subject(deciders: Deciders) -> None:
    operator = await deciders.bus(OPERATOR_USER)
    post = PublishPost(actor="system:cli", at=now(), title="Hello", summary="", body="b")
    reply = await operator.send_on(operator_command_subject("blog_post"), "hello", post, "t")
    assert reply.error is None
    forged = msgspec.structs.replace(post, actor="system:deciders", title="Forged")
    with pytest.raises(GpuWorkerError) as refused:
        await operator.send_on(operator_command_subject("blog_post"), "hello", forged, "t")
    assert refused.value.code == 403
