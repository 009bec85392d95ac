"""Facts about container templates."""

from typing import Any

import msgspec

from events.catalog import registrar

register = registrar("template")


def upcast_template_created_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 carried only the seed's fields; v2 added env and ports."""
    return {**payload, "env": {}, "ports": []}


@register(version=2, upcasters={1: upcast_template_created_v1_v2})
class TemplateCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    image_name: str
    docker_start_cmd: str | None
    container_disk_in_gb: int
    volume_in_gb: int
    volume_mount_path: str
    env: dict[str, str]
    ports: list[str]
    readme: str
    is_public: bool
    # Saved registry credential used to pull a private image (its id, never the secret).
    container_registry_auth_id: str | None = None


@register()
class TemplateUpdated(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only the fields that changed are set."""

    name: str | None = None
    image_name: str | None = None
    docker_start_cmd: str | None = None
    container_disk_in_gb: int | None = None
    volume_in_gb: int | None = None
    volume_mount_path: str | None = None
    env: dict[str, str] | None = None
    ports: list[str] | None = None
    readme: str | None = None
    container_registry_auth_id: str | None = None


@register()
class TemplateDeleted(msgspec.Struct, frozen=True):
    pass
