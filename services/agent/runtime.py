"""The container runtime an agent drives: Docker for real, simulated for development and scale.

Both implement `Runtime` and pass one shared test suite (tests/test_runtime_suite.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal, Protocol

import msgspec

# Docker labels every managed container and volume carries.
LABEL_MANAGED = "gpuworker.managed"
LABEL_INSTANCE = "gpuworker.instance"
LABEL_HOST = "gpuworker.host"


class RegistryCredentials(msgspec.Struct, frozen=True):
    username: str
    # Decrypted by the agent just before use; never logged, never in an event.
    password: str
    registry: str | None = None


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    # The customer's image reference, by name: the runtime checks this tenant may use it (with
    # `registry_auth`) before every create, and creates from the digest it verified.
    image: str
    # The tenant the container runs for.
    owner_id: str = ""
    command: str | None = None
    env: dict[str, str] = {}
    # "8888/http", "22/tcp": exposed container ports.
    ports: list[str] = []
    gpu_uuids: list[str] = []
    memory_mb: int = 1024
    # The instance's own disk: a named volume that survives stop/start, removed on delete.
    volume_name: str | None = None
    volume_mount_path: str = "/workspace"
    registry_auth: RegistryCredentials | None = None


ContainerStatus = Literal["created", "running", "exited", "missing"]


class ContainerState(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    status: ContainerStatus
    exit_code: int | None = None
    # Why it is not running, in words a customer can act on ("image pull failed: …", "OOMKilled").
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RuntimeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something the runtime saw happen on its own (a container died, was removed)."""

    instance_id: str
    status: ContainerStatus
    exit_code: int | None = None
    reason: str | None = None
    occurred_at: datetime


class ImagePullFailed(Exception):
    """The image may not or could not be had for this tenant; the message says why, in words the
    customer can act on (never the daemon's own)."""


class ContainerNotFound(Exception):
    pass


class Runtime(Protocol):
    name: str

    async def create_and_start(self, spec: ContainerSpec) -> ContainerState:
        """Idempotent by instance id: an existing container for it is started, not duplicated.
        Raises ImagePullFailed when `spec.owner_id` may not use `spec.image` (or it cannot be
        had): see services/agent/image_access.py."""
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

    def watch(self) -> AsyncIterator[RuntimeEvent]:
        """Deaths and removals that happen behind our back, as they happen."""
        ...

    async def close(self) -> None: ...
