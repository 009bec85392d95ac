"""Tenant networks (finding 5) under the containers' ownership rule (finding 1): a network is the
runtime's own only when its name is the one its labels say the runtime would give it, on this
host. No container joins a network of a tenant's name that the runtime did not make, and removal
never takes a network on the strength of its labels alone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import docker
import docker.errors
import pytest

from services.agent.container_limits import (
    LABEL_TENANT,
    is_our_network,
    network_labels,
    tenant_network,
)
from services.agent.docker_runtime import DockerRuntime
from services.agent.runtime import LABEL_HOST, LABEL_MANAGED, ContainerSpec
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401


def test_a_network_is_ours_only_under_the_name_its_labels_give() -> None:
    labels = network_labels("tenant-a", "host-1")
    assert is_our_network(tenant_network("tenant-a", "host-1"), labels, "host-1")
    # The same labels on another name (another tenant's network, or one made by hand).
    assert not is_our_network(tenant_network("tenant-b", "host-1"), labels, "host-1")
    assert not is_our_network("gpuworker-net-anything", labels, "host-1")
    # Another host's runtime made it, or it does not say whose it is.
    assert not is_our_network(tenant_network("tenant-a", "host-1"), labels, "host-2")
    unlabelled = {LABEL_MANAGED: "true", LABEL_HOST: "host-1"}
    assert not is_our_network(tenant_network("tenant-a", "host-1"), unlabelled, "host-1")
    assert LABEL_TENANT in labels and "tenant-a" not in labels.values()


async def test_no_container_joins_a_tenant_network_the_runtime_did_not_make(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    host = f"t-nets-{uuid.uuid4().hex[:8]}"
    name = tenant_network("tenant-a", host)
    # Made by hand under tenant-a's network name, without the labels that agree with it.
    decoy = await asyncio.to_thread(
        docker_client.networks.create,
        name,
        driver="bridge",
        labels={LABEL_MANAGED: "true", LABEL_HOST: host},
    )
    runtime = DockerRuntime(host, docker_client, pull_timeout_s=5)
    spec = ContainerSpec(
        instance_id=str(uuid.uuid4()),
        image=busybox_image,
        command="sleep 3600",
        owner_id="tenant-a",
    )
    try:
        with pytest.raises(docker.errors.APIError, match="not made by this agent"):
            await runtime.create_and_start(spec)
        assert (await runtime.inspect(spec.instance_id)).status == "missing"
        await runtime.remove(spec.instance_id)
        await asyncio.to_thread(decoy.reload)  # still there: not removed as ours
        assert decoy.name == name
    finally:
        await runtime.close()
        await asyncio.to_thread(clean_host, docker_client, host)
        with contextlib.suppress(docker.errors.NotFound):
            await asyncio.to_thread(decoy.remove)
