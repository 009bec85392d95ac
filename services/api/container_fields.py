"""The container's fields on the wire, written once per role: what a body may set
(`ContainerFieldsIn`), change (`ContainerFieldsPatch`) and what a response shows
(`ContainerFieldsOut`). Templates and instances inherit them, so the wire stays the seed's flat
camelCase while the domain holds one `ContainerConfig` (events/container.py); the conversions to
and from it are here too."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from events.container import (
    DEFAULT_CONTAINER_DISK_GB,
    DEFAULT_MOUNT_PATH,
    ContainerChanges,
    ContainerConfig,
)
from services.container_input import (
    MAX_MOUNT_PATH_LENGTH,
    MAX_PORTS,
    mount_path_problem,
    ports_problem,
)
from services.deciders.template import MAX_DISK_GB
from services.errors import BadRequest
from services.images import reference
from services.images.registry_policy import RegistryPolicy, RegistryRefused

Image = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
StartCmd = Annotated[str, Meta(max_length=4096)]
ContainerDisk = Annotated[int, Meta(ge=1, le=MAX_DISK_GB)]
VolumeDisk = Annotated[int, Meta(ge=0, le=MAX_DISK_GB)]
MountPath = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_MOUNT_PATH_LENGTH,
        description="absolute and normalised, no ':', not under a system path such as /etc",
    ),
]
EnvName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, Meta(max_length=4096)]
Env = Annotated[dict[EnvName, EnvValue], Meta(max_length=64)]
Port = Annotated[
    str, Meta(min_length=1, max_length=16, description="NUMBER/PROTOCOL: 1-65535, http|tcp|udp")
]
Ports = Annotated[list[Port], Meta(max_length=MAX_PORTS, description="no port twice")]
RegistryAuthId = Annotated[str, Meta(max_length=128)]


def check_container_input(volume_mount_path: str | None, ports: list[str] | None) -> None:
    """For the `__post_init__` of request bodies: msgspec turns the ValueError into a 400."""
    if volume_mount_path is not None and (problem := mount_path_problem(volume_mount_path)):
        raise ValueError(f"field `volumeMountPath`: {problem}")
    if ports is not None and (problem := ports_problem(ports)):
        raise ValueError(f"field `ports`: {problem}")


def check_image_name(image_name: str | None) -> None:
    """An image by name (never an image ID) on a registry the hosts may contact (issue 7)."""
    if image_name is None:
        return
    try:
        RegistryPolicy.from_env().check(reference.parse(image_name))
    except (reference.InvalidReference, RegistryRefused) as exc:
        raise BadRequest(f"field `imageName`: {exc}") from None


class ContainerFieldsIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """A whole container, with the seed's defaults. (The registry credential is named by each
    resource's own field: `containerRegistryAuthId` on a template.)"""

    image_name: Image
    docker_start_cmd: StartCmd | None = None
    container_disk_in_gb: ContainerDisk = DEFAULT_CONTAINER_DISK_GB
    volume_in_gb: VolumeDisk = 0
    volume_mount_path: MountPath = DEFAULT_MOUNT_PATH
    env: Env = {}
    ports: Ports = []

    def __post_init__(self) -> None:
        check_container_input(self.volume_mount_path, self.ports)

    def container_config(self, registry_auth_id: str | None) -> ContainerConfig:
        return ContainerConfig(
            image_name=self.image_name,
            docker_start_cmd=self.docker_start_cmd,
            env=self.env,
            ports=self.ports,
            container_disk_in_gb=self.container_disk_in_gb,
            volume_in_gb=self.volume_in_gb,
            volume_mount_path=self.volume_mount_path,
            registry_auth_id=registry_auth_id,
        )


class ContainerFieldsPatch(
    msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True
):
    """What may change on a container once it exists (a template may also move its mount path:
    `TemplatePatch` adds it)."""

    image_name: Image | None = None
    docker_start_cmd: StartCmd | None = None
    env: Env | None = None
    ports: Ports | None = None
    container_disk_in_gb: ContainerDisk | None = None
    volume_in_gb: VolumeDisk | None = None

    def __post_init__(self) -> None:
        check_container_input(None, self.ports)

    def container_changes(self, **more: str | None) -> ContainerChanges | None:
        """These fields, and `more` of ContainerChanges' (None: nothing is asked to change)."""
        asked: dict[str, Any] = {
            name: getattr(self, name) for name in ContainerFieldsPatch.__struct_fields__
        }
        changes = ContainerChanges(**{k: v for k, v in {**asked, **more}.items() if v is not None})
        return changes if changes.set_fields() else None


class ContainerFieldsOut(msgspec.Struct, rename="camel", kw_only=True):
    image_name: str
    docker_start_cmd: str | None
    container_disk_in_gb: int
    volume_in_gb: int
    volume_mount_path: str
    env: dict[str, str]
    ports: list[str]


def container_fields_out(config: ContainerConfig) -> dict[str, Any]:
    """The keyword arguments of a `ContainerFieldsOut` subclass that shows `config`."""
    return {name: getattr(config, name) for name in ContainerFieldsOut.__struct_fields__}
