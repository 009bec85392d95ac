"""Registry credentials for image pulls: they reach the agent sealed with its host's key
(services/agent/host_work_feed.py) and are opened only in memory, just before the pull, for the
registry the image names. The clear password never leaves this process and is never logged."""

from __future__ import annotations

from services.images import reference


def registry_of(image: str) -> str | None:
    """The registry (host[:port]) of an image reference; None for Docker Hub or a bad name."""
    try:
        domain = reference.parse(image).domain
    except reference.InvalidReference:
        return None
    return None if domain == reference.DEFAULT_DOMAIN else domain
