"""Finding 5 (issue 7): disk sizes are watched where Docker cannot enforce them. Here the agent runs
in this process on the simulated runtime (bytes "written" with its `fill` hook) so every disk an
instance has is covered, the network volume included, without writing gigabytes; the same check
on real Docker is in test_containers_on_docker.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import docker
from nats.aio.client import Client as NatsClient

from events.ids import new_id
from services.agent.disk_watch import allocated_bytes
from services.agent.host_agent import network_volume_name
from services.agent.runtime import GIB
from services.agent.simulated_runtime import SimulatedRuntime
from services.cli.embedded import EmbeddedNats
from services.deciders.volume import CreateVolume, VolumeState
from tests.docker_fixtures import docker_client  # noqa: F401
from tests.security.agent_harness import (
    DATACENTER,
    create_instance,
    host_id,
    instance_state,
    running_agent,
    wait_instance,
)


async def test_each_disk_over_its_limit_stops_its_instance(
    nats_server: EmbeddedNats,
    nc: NatsClient,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    host = host_id("t-disk")
    runtime = SimulatedRuntime(host, start_delay_s=0.01)
    async with running_agent(
        nats_server, nc, docker_client, host, gpus=4, runtime=runtime, disk_check_s=0.2
    ) as (runner, agent):
        volume_id = new_id()
        created = await runner.run(
            "volume",
            volume_id,
            CreateVolume(
                actor="user-1",
                at=datetime.now(UTC),
                name="data",
                size_gb=10,
                datacenter_id=DATACENTER,
                host_id=host,
                price_per_gb_month_micros=70_000,
                rate_card_version="2026-11-30",
            ),
            "t",
        )
        assert created.error is None, created.error
        for _ in range(50):
            volume, _seq = await runner.current("volume", volume_id)
            if isinstance(volume, VolumeState) and volume.status == "AVAILABLE":
                break
            await asyncio.sleep(0.1)
        layer = await create_instance(runner, host, container_disk_in_gb=2)
        own = await create_instance(
            runner, host, container_disk_in_gb=2, volume_in_gb=1, volume_mount_path="/data"
        )
        shared = await create_instance(
            runner, host, network_volume_id=volume_id, gpu_uuids=[f"GPU-{host}-2"]
        )
        calm = await create_instance(runner, host, gpu_uuids=[f"GPU-{host}-3"], volume_in_gb=1)
        for instance_id in (layer, own, shared, calm):
            await wait_instance(runner, instance_id, "RUNNING", 10)

        runtime.fill(layer, 2 * GIB + 1)
        runtime.fill(f"gpuworker-{own}-disk", GIB + 1)
        runtime.fill(network_volume_name(volume_id), 10 * GIB + 1)
        runtime.fill(f"gpuworker-{calm}-disk", GIB)  # exactly at its limit: fine

        reasons: dict[str, str] = {}
        for instance_id in (layer, own, shared):
            failed = await wait_instance(runner, instance_id, "FAILED", 10)
            assert failed.lease_id is None, "its GPUs are given back"
            assert failed.failure_reason
            reasons[instance_id] = failed.failure_reason
        for _ in range(50):  # the stop follows the report
            states = [(await runtime.inspect(i)).status for i in (layer, own, shared)]
            if states == ["exited"] * 3:
                break
            await asyncio.sleep(0.05)
        assert states == ["exited"] * 3, states
        assert "containerDiskInGb" in reasons[layer] and "2.0 GB" in reasons[layer]
        assert "limit of 2 GB" in reasons[layer], reasons[layer]
        assert "volumeInGb" in reasons[own] and "/data" in reasons[own], reasons[own]
        assert "limit of 1 GB" in reasons[own], reasons[own]
        assert volume_id in reasons[shared] and "limit of 10 GB" in reasons[shared]
        await asyncio.sleep(0.5)
        assert (await instance_state(runner, calm)).status == "RUNNING"
        assert agent.reports > 0


def test_allocated_bytes_counts_blocks_not_sizes(tmp_path: Path) -> None:
    root = tmp_path
    (root / "dense").write_bytes(b"x" * 1_000_000)
    with open(root / "sparse", "wb") as sparse:
        sparse.truncate(10 * GIB)  # 10 GiB long, nothing written
    (root / "sub").mkdir()
    (root / "sub" / "link").hardlink_to(root / "dense")
    size = allocated_bytes(str(root))
    assert size is not None and 1_000_000 <= size < 2_000_000, size
    assert allocated_bytes(str(root / "missing")) is None
