"""An agent that restarts picks up where it left off (issue 8: a reconfigure was lost across an
agent restart, because what it had applied lived only in its memory). The container says which
configuration it was made for, so a change made while the agent was down is applied when it
returns, and a container already up to date is left alone."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
from nats.aio.client import Client as NatsClient

from events.container import ContainerChanges
from services.agent.docker_runtime import DockerRuntime, container_name
from services.agent.host_agent import HostAgent
from services.agent.runtime import LABEL_GENERATION
from services.api.command_bus import CommandBus
from services.cli.embedded import EmbeddedNats
from services.deciders.instance import UpdateInstance
from services.nats_permissions import agent_user
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401
from tests.security.agent_harness import create_instance, host_id, running_agent, wait_instance
from tests.servers import connect_as


def container(client: docker.DockerClient, instance_id: str) -> Any:
    return client.containers.get(container_name(instance_id))


def container_or_none(client: docker.DockerClient, instance_id: str) -> Any:
    """None while it is being made anew (removed, not yet created)."""
    try:
        return container(client, instance_id)
    except docker.errors.NotFound:
        return None


async def test_a_change_made_while_the_agent_was_down_is_applied_when_it_returns(
    nats_server: EmbeddedNats,
    nc: NatsClient,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    host = host_id("t-restart")
    async with running_agent(nats_server, nc, docker_client, host) as (runner, first):
        instance_id = await create_instance(runner, host, image_name=busybox_image)
        await wait_instance(runner, instance_id, "RUNNING", 30)
        before = await asyncio.to_thread(container, docker_client, instance_id)
        assert before.labels[LABEL_GENERATION] == "0"
        # The agent process dies; its container keeps running, as Docker's do.
        await first.stop()
        change = UpdateInstance(
            actor="user-1", at=datetime.now(UTC), container=ContainerChanges(env={"NEW": "1"})
        )
        reply = await runner.run("instance", instance_id, change, "t")
        assert reply.error is None, reply.error

        agent_nc = await connect_as(nats_server, agent_user(host))
        second = HostAgent(
            host,
            agent_nc,
            CommandBus(agent_nc, 10.0),
            list(first._hosts.values()),
            DockerRuntime(host, docker_client, pull_timeout_s=5),
        )
        await second.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                now = await asyncio.to_thread(container_or_none, docker_client, instance_id)
                if (
                    now is not None
                    and now.labels.get(LABEL_GENERATION) == "1"
                    and now.status == "running"
                ):
                    break
                assert time.monotonic() < deadline, f"not recreated: {now and now.labels}"
                await asyncio.sleep(0.2)
            assert "NEW=1" in now.attrs["Config"]["Env"]
            assert now.id != before.id, "a new container for the new configuration"
            # Up to date now: nothing more happens to it.
            await asyncio.sleep(1.5)
            assert (await asyncio.to_thread(container, docker_client, instance_id)).id == now.id
        finally:
            await second.stop()
            await agent_nc.close()
        # The harness stops its own agent again on the way out: that must be harmless.
