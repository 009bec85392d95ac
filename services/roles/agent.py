"""`gpuworker agent`: the executor of one GPU host (or, simulated, of many)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from events.host import HostGpu
from events.subjects import WORK_STREAM
from services.agent.declared_inventory import DeclaredInventory
from services.agent.host_agent import HostAgent, HostSpec
from services.agent.host_work_feed import HostWorkFeed
from services.agent.host_workers import DEFAULT_RELAY_PORT, HostWorkers
from services.agent.inventory import GpuInventory
from services.agent.inventory_detect import detect_inventory
from services.agent.port_publishing import HostAddresses
from services.agent.runtime import Runtime
from services.agent.simulated_runtime import SimulatedRuntime
from services.api.command_bus import CommandBus
from services.config import Settings, default_host_id
from services.nats_connection import connect_role
from services.nats_permissions import agent_user
from services.roles.lifecycle import until_signalled, wait_for_stream
from services.security.host_keys import HostKeys, host_key

log = logging.getLogger("gpuworker.agent")

DEFAULT_API_URL = "http://127.0.0.1:8080"


def docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def simulated_runtime(host_id: str) -> SimulatedRuntime:
    """Its containers outlive the agent when GPUWORKER_AGENT_STATE_DIR names a folder for them.
    GPUWORKER_SIMULATED_START_DELAY (seconds) is how long a start or stop takes: long enough,
    and a person (or a browser test) sees an instance pass through STARTING."""
    delay = float(os.environ.get("GPUWORKER_SIMULATED_START_DELAY") or 0.05)
    state_dir = os.environ.get("GPUWORKER_AGENT_STATE_DIR")
    if not state_dir:
        return SimulatedRuntime(host_id, start_delay_s=delay)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return SimulatedRuntime(
        host_id, state_file=Path(state_dir) / f"simulated-{host_id}.json", start_delay_s=delay
    )


def choose_runtime(requested: str | None, host_id: str) -> Runtime:
    if requested == "simulated":
        return simulated_runtime(host_id)
    if requested == "docker" or (requested is None and docker_reachable()):
        from services.agent.container_limits import ContainerLimits
        from services.agent.docker_runtime import DockerRuntime
        from services.agent.host_ports import DEFAULT_HOST_PORTS, parse_range

        ports = os.environ.get("GPUWORKER_HOST_PORTS")
        return DockerRuntime(
            host_id,
            limits=ContainerLimits.from_env(),
            host_ports=parse_range(ports) if ports else DEFAULT_HOST_PORTS,
        )
    log.warning("Docker is not reachable: using the SIMULATED runtime (no containers)")
    return simulated_runtime(host_id)


def agent_host_key(host_id: str) -> str:
    """GPUWORKER_HOST_KEY (`gpuworker host-key <host-id>` prints it); on a machine that runs the
    whole platform, derived from GPUWORKER_SECRET_KEY. A host that joins over the network gets
    only its own key, never the master key."""
    given = os.environ.get("GPUWORKER_HOST_KEY")
    if given:
        return given
    master = os.environ.get("GPUWORKER_SECRET_KEY")
    if not master:
        raise SystemExit(
            "gpuworker agent: set GPUWORKER_HOST_KEY (run `gpuworker host-key <host-id>` where"
            " GPUWORKER_SECRET_KEY is set)"
        )
    return host_key(master, host_id)


def host_spec(host_id: str, inventory: GpuInventory, datacenter: str, cloud: str) -> HostSpec:
    declared_disk = os.environ.get("GPUWORKER_HOST_DISK_GB")
    return HostSpec(
        host_id=host_id,
        datacenter_id=datacenter,
        cloud_type=cloud,
        disk_gb=int(declared_disk) if declared_disk else None,
        inventory_source=inventory.source,
        gpus=[
            HostGpu(index=d.index, uuid=d.uuid, gpu_type_id=d.name, memory_mb=d.memory_mb)
            for d in inventory.devices()
        ],
    )


async def run_agent(
    settings: Settings,
    host_id: str | None,
    datacenter: str,
    cloud_type: str,
    runtime_name: str | None,
    gpus: str | None,
    simulate_hosts: int,
) -> None:
    host_id = host_id or default_host_id()
    if simulate_hosts > 1:
        if runtime_name == "docker":
            raise SystemExit("--simulate-hosts needs the simulated runtime")
        spec = gpus or "NVIDIA GeForce RTX 4090:8"
        # `<prefix>.<n>`: under the prefix in subjects, so one fleet credential covers them all.
        hosts = [
            host_spec(
                f"{host_id}.{i:04d}",
                DeclaredInventory.parse(spec, f"{host_id}.{i:04d}"),
                datacenter,
                cloud_type,
            )
            for i in range(simulate_hosts)
        ]
        runtime: Runtime = simulated_runtime(host_id)
        log.warning("simulating %d hosts with %s each (no containers)", simulate_hosts, spec)
    else:
        hosts = [host_spec(host_id, detect_inventory(gpus, host_id), datacenter, cloud_type)]
        runtime = choose_runtime(runtime_name, host_id)
    nc = await connect_role(settings, agent_user(host_id))
    await wait_for_stream(nc, WORK_STREAM)
    keys = HostKeys(host_id, agent_host_key(host_id))
    bus = CommandBus(nc, settings.request_timeout_s)
    # The api as this host reaches it: serverless workers' protocol traffic is relayed there.
    api_url = os.environ.get("GPUWORKER_AGENT_API_URL") or DEFAULT_API_URL
    relay_port = int(os.environ.get("GPUWORKER_WORKER_RELAY_PORT") or DEFAULT_RELAY_PORT)
    nvml_hosts = {h.host_id for h in hosts if h.inventory_source == "nvml"}
    log.info("serverless workers reach the api at %s (relayed on port %d)", api_url, relay_port)
    # The relay's and simulated workers' client: a line per request is noise at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def serverless(schedule: Callable[[str], None], feed: HostWorkFeed) -> HostWorkers:
        return HostWorkers(
            nc,
            bus,
            {h.host_id: h for h in hosts},
            runtime,
            schedule,
            api_url=api_url,
            ping_interval_s=settings.worker_ping_interval_s,
            feed=feed,
            relay_port=relay_port,
            real_gpus=lambda host_id: host_id in nvml_hosts,
        )

    agent = HostAgent(
        host_id,
        nc,
        bus,
        hosts,
        runtime,
        keys=keys,
        heartbeat_s=float(os.environ.get("GPUWORKER_HEARTBEAT", "2")),
        disk_check_s=float(os.environ.get("GPUWORKER_DISK_CHECK_INTERVAL", "60")),
        # One simulated process may stand for many hosts: give it workers to match.
        workers=min(256, max(16, 4 * len(hosts))),
        addresses=HostAddresses.from_env(),
        serverless=serverless,
    )
    await agent.start()
    try:
        await until_signalled()
    finally:
        await agent.stop()
        await nc.close()
