"""What every customer container gets, whatever its image or its owner asks for: the limits an
operator sets (pids, log rotation), no swap, no privilege gain, fewer capabilities, and a network
of its tenant's own. Customers run their own code on our hosts; these keep one customer's container
from starving the host, filling its disk with logs, or reaching another customer's containers.

Kept apart from the Docker runtime so the rules read in one place; `docker_runtime` applies them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import docker.types
import msgspec

from services.agent.runtime import LABEL_HOST, LABEL_MANAGED

NETWORK_PREFIX = "gpuworker-net-"
LABEL_TENANT = "gpuworker.tenant"

# Dropped from Docker's default set. Kept: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID,
# KILL, NET_BIND_SERVICE and SYS_CHROOT, which ordinary images need (package installs, Jupyter,
# sshd drops privileges with SETUID/SETGID and chroots its privilege-separation child).
DROPPED_CAPABILITIES = (
    # Raw and packet sockets: forged ARP/IP traffic on the bridge, sniffing neighbours.
    "NET_RAW",
    # Device nodes: a container needs none beyond the ones Docker gives it.
    "MKNOD",
    # Writing to the host kernel's audit log.
    "AUDIT_WRITE",
    # File capabilities and changing capability sets: ways to hand privileges on.
    "SETFCAP",
    "SETPCAP",
)


class ContainerLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Operator configuration (environment of the agent, see `from_env`)."""

    # Processes and threads per container: a fork bomb stops here, not at the host's limit.
    pids: int = 4096
    # json-file log rotation: at most log_max_files files of log_max_size each per container.
    log_max_size: str = "10m"
    log_max_files: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ContainerLimits:
        default = cls()
        limits = cls(
            pids=int(env.get("GPUWORKER_CONTAINER_PIDS_LIMIT", default.pids)),
            log_max_size=env.get("GPUWORKER_CONTAINER_LOG_MAX_SIZE", default.log_max_size),
            log_max_files=int(env.get("GPUWORKER_CONTAINER_LOG_MAX_FILES", default.log_max_files)),
        )
        if limits.pids < 1 or limits.log_max_files < 1:
            raise ValueError(
                "GPUWORKER_CONTAINER_PIDS_LIMIT and GPUWORKER_CONTAINER_LOG_MAX_FILES must be >= 1"
            )
        return limits


def tenant_hash(owner_id: str) -> str:
    return hashlib.sha256(owner_id.encode()).hexdigest()[:20]


def _network_name(tenant: str, host_id: str) -> str:
    digest = hashlib.sha256(f"{host_id}\0{tenant}".encode()).hexdigest()[:20]
    return f"{NETWORK_PREFIX}{digest}"


def tenant_network(owner_id: str, host_id: str) -> str:
    """The bridge network of one tenant on one host (hashed: names stay short and charset-safe,
    and several agents sharing one Docker engine, as in tests, keep theirs apart)."""
    return _network_name(tenant_hash(owner_id), host_id)


def network_labels(owner_id: str, host_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_HOST: host_id, LABEL_TENANT: tenant_hash(owner_id)}


def is_our_network(name: str, labels: Mapping[str, str], host_id: str) -> bool:
    """A tenant network the runtime of `host_id` made: the containers' rule (services.agent.
    docker_runtime.is_ours) for networks, its name the one its labels say we would give it."""
    tenant = labels.get(LABEL_TENANT, "")
    return (
        bool(tenant)
        and labels.get(LABEL_MANAGED) == "true"
        and labels.get(LABEL_HOST) == host_id
        and name == _network_name(tenant, host_id)
    )


def contained(
    spec_memory_mb: int,
    vcpus: int,
    owner_id: str,
    host_id: str,
    limits: ContainerLimits,
    host_cpus: int | None,
) -> dict[str, Any]:
    """The `containers.create` keyword arguments that contain a customer container."""
    memory = f"{spec_memory_mb}m"
    kwargs: dict[str, Any] = {
        "mem_limit": memory,
        # Memory + swap = memory: no swap, so a container cannot page the host to a crawl.
        "memswap_limit": memory,
        "pids_limit": limits.pids,
        "log_config": docker.types.LogConfig(
            type="json-file",
            config={"max-size": limits.log_max_size, "max-file": str(limits.log_max_files)},
        ),
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": list(DROPPED_CAPABILITIES),
    }
    if vcpus > 0:
        # Docker refuses more CPUs than the host has; more than all of them is no limit anyway.
        cpus = min(vcpus, host_cpus) if host_cpus else vcpus
        kwargs["nano_cpus"] = cpus * 1_000_000_000
    if owner_id:
        kwargs["network"] = tenant_network(owner_id, host_id)
    else:
        # A container nobody owns shares a network with nobody.
        kwargs["network_mode"] = "none"
    return kwargs
