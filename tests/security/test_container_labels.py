"""Finding 1 (issue 7), the runtime's side: a container carries our labels only because we set
them. A container this runtime did not create (a customer image run by hand with our labels, a
container named by Docker) is not ours, whatever its labels say: it is not listed, inspected,
removed or watched as one of our instances."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import docker
import docker.errors

from services.agent.docker_runtime import DockerRuntime
from services.agent.runtime import LABEL_HOST, LABEL_INSTANCE, LABEL_MANAGED, ContainerSpec
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401

EVENT_TIMEOUT_S = 10


async def test_a_container_we_did_not_create_is_not_ours(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    host_id = f"t-foreign-{uuid.uuid4().hex[:8]}"
    claimed = f"i-{uuid.uuid4().hex[:12]}"
    runtime = DockerRuntime(host_id, docker_client)
    watch = runtime.watch()
    # Docker names it; its labels claim an instance of this very host.
    foreign = await asyncio.to_thread(
        docker_client.containers.run,
        busybox_image,
        ["sleep", "3600"],
        labels={LABEL_MANAGED: "true", LABEL_INSTANCE: claimed, LABEL_HOST: host_id},
        detach=True,
    )
    mine = ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}", image=busybox_image, command="sleep 3600"
    )
    try:
        assert await runtime.list_managed() == []
        assert (await runtime.inspect(claimed)).status == "missing"

        await runtime.remove(claimed)

        await asyncio.to_thread(foreign.reload)  # NotFound here: it was removed as "ours"
        assert foreign.status == "running"

        # Its death is not reported as the claimed instance's: the first event is our own.
        await runtime.create_and_start(mine)
        await asyncio.to_thread(foreign.kill)
        await runtime.stop(mine.instance_id, timeout_s=0)
        event = await asyncio.wait_for(anext(watch), EVENT_TIMEOUT_S)
        assert event.instance_id == mine.instance_id, event
    finally:
        await runtime.remove(mine.instance_id)
        await runtime.close()
        with contextlib.suppress(docker.errors.NotFound):
            await asyncio.to_thread(foreign.remove, force=True)
