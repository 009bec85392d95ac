"""Private image pulls: credentials opened only in the agent, never in a message or a reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from events.ids import new_id
from events.store import JetStreamEventStore
from services.agent.docker_runtime import DockerRuntime
from services.agent.image_access import ImageAccess, ImagePolicy
from services.agent.registry_credentials import RegistryCredentialStore, registry_of
from services.agent.runtime import ContainerSpec, ImagePullFailed, RegistryCredentials
from services.command_wire import CommandEnvelope
from services.deciders.catalog import DECIDERS
from services.deciders.registry_auth import (
    CreateRegistryAuth,
    DeleteRegistryAuth,
    sealed_for,
)
from services.images.registry_policy import RegistryPolicy
from services.processes.runner import DeciderRunner
from services.security.secret_box import SecretBox, generate_key

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


async def test_credentials_open_only_for_their_owner(nc: NatsClient) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    runner = DeciderRunner(store, DECIDERS)
    box = SecretBox(generate_key())
    auth_id, password = new_id(), f"pw-{uuid.uuid4().hex}"
    await send(
        runner,
        auth_id,
        CreateRegistryAuth(
            actor="owner",
            at=AT,
            name="ngc",
            username="$oauthtoken",
            password_ciphertext=box.seal(password, sealed_for(auth_id)),
        ),
    )
    credentials = RegistryCredentialStore(store, box)
    got = await credentials.for_pull(auth_id, "owner", "nvcr.io/nvidia/pytorch:2.1.0")
    assert got == RegistryCredentials(username="$oauthtoken", password=password, registry="nvcr.io")
    assert await credentials.for_pull(auth_id, "someone-else", "nvcr.io/x:1") is None
    # A key that is not the one it was sealed with opens nothing.
    wrong_key = RegistryCredentialStore(store, SecretBox(generate_key()))
    assert await wrong_key.for_pull(auth_id, "owner", "nvcr.io/x:1") is None
    await send(runner, auth_id, DeleteRegistryAuth(actor="owner", at=AT))
    assert await credentials.for_pull(auth_id, "owner", "nvcr.io/x:1") is None


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
