"""What a container is made of, written once: templates, instances (and serverless workers next)
embed `ContainerConfig` in their commands, events and states, and carry `ContainerChanges` when it
changes.

Before this value existed the same eight fields were listed in every command, event, state and API
model of each resource, and they drifted: the template called its credential
`container_registry_auth_id`, the instance `registry_auth_id`. The events that were written with
the flat fields are lifted on read by `nest_container` (stored events are never rewritten)."""

from __future__ import annotations

from typing import Any

import msgspec

DEFAULT_CONTAINER_DISK_GB = 20
DEFAULT_MOUNT_PATH = "/workspace"


class ContainerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The container a template describes and an instance runs."""

    image_name: str
    docker_start_cmd: str | None = None
    env: dict[str, str] = {}
    ports: list[str] = []
    container_disk_in_gb: int = DEFAULT_CONTAINER_DISK_GB
    volume_in_gb: int = 0
    volume_mount_path: str = DEFAULT_MOUNT_PATH
    # A saved registry credential of the owner's to pull a private image with (its id, never the
    # secret).
    registry_auth_id: str | None = None


class ContainerChanges(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only the fields that change are set (None: unchanged; none of them can be cleared)."""

    image_name: str | None = None
    docker_start_cmd: str | None = None
    env: dict[str, str] | None = None
    ports: list[str] | None = None
    container_disk_in_gb: int | None = None
    volume_in_gb: int | None = None
    volume_mount_path: str | None = None
    registry_auth_id: str | None = None

    def set_fields(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}

    def apply(self, config: ContainerConfig) -> ContainerConfig:
        changes = self.set_fields()
        return msgspec.structs.replace(config, **changes) if changes else config

    def differing_from(self, config: ContainerConfig) -> ContainerChanges | None:
        """Those of these changes that really change `config` (None: none does)."""
        changed = {k: v for k, v in self.set_fields().items() if getattr(config, k) != v}
        return ContainerChanges(**changed) if changed else None


CONTAINER_FIELDS = ContainerConfig.__struct_fields__


def nest_container(
    payload: dict[str, Any], registry_auth_field: str = "registry_auth_id"
) -> dict[str, Any]:
    """For the upcasters of the events written before `ContainerConfig`: the flat container fields
    of `payload` (those present: an update carries only what changed) move into `container`, and
    the credential's old name (`registry_auth_field`) becomes `registry_auth_id`. No `container`
    when none was there."""
    rest = dict(payload)
    container: dict[str, Any] = {}
    for old, new in (
        *((f, f) for f in CONTAINER_FIELDS),
        (registry_auth_field, "registry_auth_id"),
    ):
        if old in rest:
            value = rest.pop(old)
            if value is not None:
                container[new] = value
    return {**rest, "container": container} if container else rest
