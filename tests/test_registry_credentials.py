"""Private image pulls: credentials opened only in the agent, never in a message or a reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from events.ids import new_id
from events.store import JetStreamEventStore
from events.subjects import WORK_STREAM, work_subject
from services.agent.docker_runtime import DockerRuntime
from services.agent.host_work_feed import HostWorkFeed
from services.agent.image_access import ImageAccess, ImagePolicy
from services.agent.registry_credentials import registry_of
from services.agent.runtime import ContainerSpec, ImagePullFailed, RegistryCredentials
from services.aggregate_follower import AggregateFollower
from services.cli.embedded import EmbeddedNats
from services.command_wire import CommandEnvelope
from services.deciders.catalog import DECIDERS
from services.deciders.instance import INSTANCE, InstanceState
from services.deciders.registry_auth import (
    CreateRegistryAuth,
    sealed_for,
)
from services.images.registry_policy import RegistryPolicy
from services.nats_permissions import agent_user
from services.processes.host_work_router import HostWorkRouter
from services.processes.runner import DeciderRunner
from services.security.host_keys import HostKeys, host_key
from services.security.secret_box import SecretBox, generate_key
from tests.security.agent_harness import create_instance
from tests.servers import connect_as

AT = datetime(2026, 11, 29, tzinfo=UTC)


async def send(runner: DeciderRunner, auth_id: str, command: msgspec.Struct) -> None:
    reply = await runner.handle(
        "registry_auth",
        CommandEnvelope(
            id=new_id(),
            aggregate_id=auth_id,
            correlation_id="t",
            command=msgspec.Raw(msgspec.json.encode(command)),
        ),
    )
    assert reply.error is None, reply.error


def test_registry_of_image_references() -> None:
    assert registry_of("nvcr.io/nvidia/pytorch:2.1.0") == "nvcr.io"
    assert registry_of("localhost:5000/x") == "localhost:5000"
    assert registry_of("vllm/vllm-openai:v0.6.3") is None
    assert registry_of("busybox") is None


async def wait_for(found: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not found():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.05)


async def test_credentials_reach_only_the_host_of_the_owners_container(
    nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """The deciders seal a credential for the host whose instance pulls with it; its agent
    (logged in as that host, holding only that host's key) opens it, for the owner only."""
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    runner = DeciderRunner(store, DECIDERS)
    master = generate_key()
    router = HostWorkRouter(nc, store, master)
    await router.start()
    auth_id, password = new_id(), f"pw-{uuid.uuid4().hex}"
    await send(
        runner,
        auth_id,
        CreateRegistryAuth(
            actor="owner",
            at=AT,
            name="ngc",
            username="$oauthtoken",
            password_ciphertext=SecretBox(master).seal(password, sealed_for(auth_id)),
        ),
    )
    host, other = f"h-{uuid.uuid4().hex[:6]}", f"h-{uuid.uuid4().hex[:6]}"
    image = "nvcr.io/nvidia/pytorch:2.1.0"
    mine = await create_instance(
        runner, host, owner="owner", image_name=image, registry_auth_id=auth_id
    )
    # Someone else names the owner's credential on their own instance: it is not sealed for them.
    theirs = await create_instance(
        runner, host, owner="someone-else", image_name=image, registry_auth_id=auth_id
    )
    elsewhere = await create_instance(
        runner, other, owner="owner", image_name=image, registry_auth_id=auth_id
    )

    async def feed_of(host_id: str, key: str) -> tuple[NatsClient, HostWorkFeed, Any]:
        nats_server.add_agent(host_id)
        agent_nc = await connect_as(nats_server, agent_user(host_id))
        follower: AggregateFollower[InstanceState] = AggregateFollower(INSTANCE)
        feed = HostWorkFeed(agent_nc, host_id, HostKeys(host_id, key))
        feed.add("instance", follower)
        await feed.follow()
        return agent_nc, feed, follower

    agent_nc, feed, follower = await feed_of(host, host_key(master, host))
    try:
        await wait_for(lambda: follower.get(mine) is not None and follower.get(theirs) is not None)
        # Only this host's instances reach it.
        assert set(follower.states()) == {mine, theirs}
        assert feed.registry_credentials(host, auth_id, "owner", "nvcr.io") == (
            RegistryCredentials(username="$oauthtoken", password=password, registry="nvcr.io")
        )
        assert feed.registry_credentials(host, auth_id, "someone-else", "nvcr.io") is None
        # A host's key opens nothing sealed for another host.
        assert feed.registry_credentials(other, auth_id, "owner", "nvcr.io") is None
    finally:
        await feed.stop()
        await agent_nc.close()
    # The other host's agent, with a key that is not its own, opens nothing either.
    agent_nc, feed, follower = await feed_of(other, generate_key())
    try:
        await wait_for(lambda: follower.get(elsewhere) is not None)
        assert set(follower.states()) == {elsewhere}
        assert feed.registry_credentials(other, auth_id, "owner", "nvcr.io") is None
    finally:
        await feed.stop()
        await agent_nc.close()
        await router.stop()
    # Nothing the router published holds the password in clear.
    js = nc.jetstream()
    for subject in (
        work_subject(host, "instance", mine),
        work_subject(other, "instance", elsewhere),
    ):
        published = await js.get_last_msg(WORK_STREAM, subject, direct=True)
        assert published.data and password.encode() not in published.data


async def test_failed_private_pull_does_not_leak_the_password() -> None:
    # localhost:1 is allowed here so that the daemon really tries (and fails) to pull with it.
    images = ImageAccess(ImagePolicy(registries=RegistryPolicy(frozenset({"localhost:1"}))))
    runtime = DockerRuntime(f"creds-{uuid.uuid4().hex[:8]}", pull_timeout_s=20, images=images)
    password = f"pw-{uuid.uuid4().hex}"
    spec = ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}",
        image="localhost:1/private/does-not-exist:1",
        owner_id="ada",
        registry_auth=RegistryCredentials(
            username="ada", password=password, registry="localhost:1"
        ),
    )
    try:
        with pytest.raises(ImagePullFailed) as failure:
            await runtime.create_and_start(spec)
        assert "does-not-exist" in str(failure.value)
        assert "registry not reachable" in str(failure.value)
        assert password not in str(failure.value)
        assert password not in repr(failure.value.__cause__ or "")
        assert password not in repr(failure.value.__context__ or "")
    finally:
        await runtime.close()
