"""Finding 5 (issue 7): a customer container is contained. Each limit shows in `docker inspect`,
and where it can be shown to bite here, it does: a fork bomb stops at the pids limit, a device node
cannot be made, privileges cannot be gained, memory has no swap behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest

from services.agent.container_limits import ContainerLimits
from services.agent.docker_runtime import DockerRuntime, container_name
from services.agent.runtime import ContainerSpec
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401

PIDS = 64
MEMORY_MB = 64
DROPPED = {"NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SETPCAP"}
KEPT = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"}
# Linux capability numbers, for reading /proc/<pid>/status.
CAP_BITS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}


@pytest.fixture
async def contained(
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> AsyncIterator[Any]:
    """A running container made by the runtime with small limits, as docker-py sees it."""
    host = f"t-limits-{uuid.uuid4().hex[:8]}"
    limits = ContainerLimits(pids=PIDS, log_max_size="1m", log_max_files=2)
    runtime = DockerRuntime(host, docker_client, pull_timeout_s=5, limits=limits)
    spec = ContainerSpec(
        instance_id=str(uuid.uuid4()),
        image=busybox_image,
        command="sleep 3600",
        memory_mb=MEMORY_MB,
        vcpus=1,
        owner_id="tenant-limits",
    )
    try:
        state = await runtime.create_and_start(spec)
        assert state.status == "running", state
        yield await asyncio.to_thread(
            docker_client.containers.get, container_name(spec.instance_id)
        )
    finally:
        await runtime.close()
        await asyncio.to_thread(clean_host, docker_client, host)


def _exec(container: Any, script: str) -> tuple[int, str]:
    code, output = container.exec_run(["sh", "-c", script])
    return int(code), bytes(output).decode(errors="replace")


def _caps(status: str, field: str) -> set[str]:
    line = next(x for x in status.splitlines() if x.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {name for name, bit in CAP_BITS.items() if mask & (1 << bit)}


async def test_limits_show_in_docker_inspect(contained: Any) -> None:
    host_config = contained.attrs["HostConfig"]
    assert host_config["PidsLimit"] == PIDS
    assert host_config["Memory"] == MEMORY_MB * 2**20
    assert host_config["MemorySwap"] == host_config["Memory"], "memory + swap = memory: no swap"
    assert host_config["NanoCpus"] == 1_000_000_000
    assert host_config["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }
    assert any(o.startswith("no-new-privileges") for o in host_config["SecurityOpt"] or [])
    dropped = {c.upper().removeprefix("CAP_") for c in host_config["CapDrop"] or []}
    assert dropped >= DROPPED, dropped
    assert not dropped & KEPT, dropped


async def test_no_privileges_gained_and_no_device_nodes(contained: Any) -> None:
    status = (await asyncio.to_thread(_exec, contained, "cat /proc/1/status"))[1]
    assert "NoNewPrivs:\t1" in status, status
    assert not _caps(status, "CapBnd") & DROPPED, status
    assert _caps(status, "CapBnd") >= KEPT, status
    code, output = await asyncio.to_thread(_exec, contained, "busybox mknod /zero c 1 5")
    assert code != 0 and "not permitted" in output, output


async def test_a_fork_bomb_stops_at_the_pids_limit(contained: Any) -> None:
    bomb = "(i=0; while [ $i -lt 500 ]; do sleep 120 & i=$((i+1)); done); echo exit=$?"
    _code, output = await asyncio.to_thread(_exec, contained, bomb)
    assert "can't fork" in output, output
    assert "exit=0" not in output, output
    # Counted from the host (inside, nothing more can be started): at the limit, not past it.
    processes = (await asyncio.to_thread(contained.top))["Processes"] or []
    assert PIDS - 8 <= len(processes) <= PIDS, len(processes)


async def test_memory_has_no_swap_to_spill_into(contained: Any) -> None:
    grow = (
        f"x=$(busybox head -c {4 * MEMORY_MB}000000 /dev/zero | busybox tr '\\000' a);"
        " echo survived ${#x}"
    )
    _code, output = await asyncio.to_thread(_exec, contained, grow)
    assert "survived" not in output, output
    contained.reload()
    assert contained.status == "running", "the limit killed the greedy process, not the box"
