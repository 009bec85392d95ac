"""The container runtime an agent drives: Docker for real, simulated for development and scale.

Both implement `Runtime` and pass one shared test suite (tests/test_runtime_suite.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from services.container_input import mount_path_problem, ports_problem

# Docker labels every managed container and volume carries.
LABEL_MANAGED = "gpuworker.managed"
LABEL_INSTANCE = "gpuworker.instance"
LABEL_HOST = "gpuworker.host"
# The instance's configuration generation the container was made for: a restarted agent still
# knows whether a change of image, command, env or ports is waiting to be applied.
LABEL_GENERATION = "gpuworker.generation"
# Disk sizes (containerDiskInGb, volumeInGb, a volume's size, a host's disk) count GiB.
GIB = 2**30
# Stands for the host's address on the container's own network in the env vars a spec lists in
# `gateway_env`: the runtime writes the address in when it makes the container (the network, and
# so its address, may be made anew between the agent's asking and the create).
GATEWAY_PLACEHOLDER = "gpuworker-gateway"


class RegistryCredentials(msgspec.Struct, frozen=True):
    username: str
    # Decrypted by the agent just before use; never logged, never in an event.
    password: str
    registry: str | None = None


class HostPort(msgspec.Struct, frozen=True, kw_only=True):
    """Where the host publishes one of a container's ports."""

    host_ip: str
    # In a spec: the host port wanted (0: any free one the runtime chooses; a wanted port that
    # is taken is replaced by a free one). In a state: the one it has.
    host_port: int = 0


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line a container wrote (stdout or stderr), with when the runtime recorded it."""

    at: datetime | None
    text: str


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    # The customer's image reference, by name: the runtime checks this tenant may use it (with
    # `registry_auth`) before every create, and creates from the digest it verified.
    image: str
    # The tenant the container runs for: its image access is checked, and containers of one
    # owner share a network, nobody else's.
    owner_id: str = ""
    command: str | None = None
    env: dict[str, str] = {}
    # "8888/http", "22/tcp": exposed container ports.
    ports: list[str] = []
    # Where each of `ports` is published on the host (by the declared port); a port left out is
    # published on the runtime's default address, at any free host port.
    publish: dict[str, HostPort] = {}
    # OpenSSH public key lines for root's ~/.ssh/authorized_keys, written before the container
    # first starts when its image has an sshd (the keys are in `env` as PUBLIC_KEY as well).
    authorized_keys: list[str] = []
    gpu_uuids: list[str] = []
    memory_mb: int = 1024
    # CPU limit in whole vCPUs; 0: none.
    vcpus: int = 0
    # The instance's own disk: a named volume that survives stop/start, removed on delete.
    volume_name: str | None = None
    volume_mount_path: str = "/workspace"
    registry_auth: RegistryCredentials | None = None
    # The instance's configuration generation (bumped when the container must be made anew).
    generation: int = 0
    # Env vars (the platform's own, never a customer's) in which GATEWAY_PLACEHOLDER is replaced
    # by the host's address on the container's network (a serverless worker's URLs).
    gateway_env: list[str] = []


ContainerStatus = Literal["created", "running", "exited", "missing"]


class ContainerState(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    status: ContainerStatus
    exit_code: int | None = None
    # Why it is not running, in words a customer can act on ("image pull failed: …", "OOMKilled").
    reason: str | None = None
    # The configuration generation it was created for (None: not known, e.g. an older container).
    generation: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Where its ports are published, by Docker's key ("8888/tcp", "53/udp"); stable across stop
    # and start of the same container.
    ports: dict[str, HostPort] = {}


class RuntimeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something the runtime saw happen on its own (a container died, was removed)."""

    instance_id: str
    status: ContainerStatus
    exit_code: int | None = None
    reason: str | None = None
    occurred_at: datetime


class DiskUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes on disk, as `du` counts them (allocated blocks, so a sparse file costs only what it
    holds): each managed container's writable layer by instance id, each volume by name."""

    containers: dict[str, int] = {}
    volumes: dict[str, int] = {}


class ImagePullFailed(Exception):
    """The image may not or could not be had for this tenant; the message says why, in words the
    customer can act on (never the daemon's own)."""


class ContainerNotFound(Exception):
    pass


class InvalidContainerSpec(ValueError):
    """The spec asks for something no container may have; the message names the field. Retrying
    cannot help, so the agent fails the instance at once."""


def check_spec(spec: ContainerSpec) -> None:
    """The API's rules again, where the container is built: an old or foreign event may hold a
    value the API would refuse today. Raises InvalidContainerSpec."""
    if spec.volume_name and (problem := mount_path_problem(spec.volume_mount_path)):
        raise InvalidContainerSpec(f"field `volumeMountPath`: {problem}")
    if problem := ports_problem(spec.ports):
        raise InvalidContainerSpec(f"field `ports`: {problem}")


class Runtime(Protocol):
    name: str

    async def create_and_start(self, spec: ContainerSpec) -> ContainerState:
        """Idempotent by instance id: an existing container for it is started, not duplicated.
        Raises InvalidContainerSpec (see `check_spec`) before anything is created, and
        ImagePullFailed when `spec.owner_id` may not use `spec.image` (or it cannot be had): see
        services/agent/image_access.py."""
        ...

    async def stop(self, instance_id: str, timeout_s: float = 10) -> ContainerState: ...

    async def start(self, instance_id: str) -> ContainerState: ...

    async def restart(self, instance_id: str, timeout_s: float = 10) -> ContainerState: ...

    async def remove(self, instance_id: str, volume_name: str | None = None) -> None:
        """Gone for real when this returns, and the volume `volume_name` with it: the caller names
        the instance's own disk from its records (never from a label); a network volume goes
        only by `remove_volume`. Missing is not an error."""
        ...

    async def inspect(self, instance_id: str) -> ContainerState:
        """status "missing" when there is no container for the instance."""
        ...

    async def list_managed(self) -> list[ContainerState]:
        """Every container this host's runtime manages (by label), whatever its state."""
        ...

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        """A named volume that outlives containers (network volumes); existing is fine."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Gone, with its data, when this returns. Missing is not an error."""
        ...

    async def volume_exists(self, name: str) -> bool: ...

    async def storage_gb(self) -> int | None:
        """GiB of disk that this host's containers and volumes share; None if unknown."""
        ...

    async def tenant_gateway(self, owner_id: str) -> str | None:
        """The host's own address on `owner_id`'s network (made if it does not exist yet), where
        that tenant's containers reach a service of the host (services/agent/worker_relay.py);
        None when the runtime's containers share the host's view of the network (simulated)."""
        ...

    async def disk_usage(self, volumes: list[str]) -> DiskUsage:
        """What this host's managed containers and the named volumes hold now (a volume that
        does not exist is left out)."""
        ...

    def logs(
        self, instance_id: str, *, tail: int, since: datetime | None, follow: bool
    ) -> AsyncGenerator[LogLine, None]:
        """The container's last `tail` lines (since `since`, if given), oldest first; with
        `follow`, then each new line as it is written, until the container stops or the iterator
        is closed (`aclose`). Raises ContainerNotFound when there is no container. The reader
        sets the pace: nothing is read ahead of what it takes."""
        ...

    def watch(self) -> AsyncIterator[RuntimeEvent]:
        """Deaths and removals that happen behind our back, as they happen."""
        ...

    async def close(self) -> None: ...
