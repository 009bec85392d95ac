"""Facts about container templates."""

from typing import Any

import msgspec

from events.catalog import registrar
from events.container import ContainerChanges, ContainerConfig, nest_container

register = registrar("template")


def upcast_template_created_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 carried only the seed's fields; v2 added env and ports."""
    return {**payload, "env": {}, "ports": []}


def upcast_template_created_v2_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """v3 holds the container spec as one `ContainerConfig`."""
    return nest_container(payload, "container_registry_auth_id")


@register(version=3, upcasters={1: upcast_template_created_v1_v2, 2: upcast_template_created_v2_v3})
class TemplateCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    container: ContainerConfig
    readme: str
    is_public: bool


def upcast_template_updated_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 holds the container fields that changed as one `ContainerChanges`."""
    return nest_container(payload, "container_registry_auth_id")


@register(version=2, upcasters={1: upcast_template_updated_v1_v2})
class TemplateUpdated(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only the fields that changed are set."""

    name: str | None = None
    container: ContainerChanges | None = None
    readme: str | None = None


@register()
class TemplateDeleted(msgspec.Struct, frozen=True):
    pass
