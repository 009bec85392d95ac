"""Events: the envelope, the typed event catalogue, subjects and the JetStream event store.

Importing the package registers every event type with the catalogue."""

from events import (
    api_key,
    blog,
    email_claim,
    endpoint,
    host,
    instance,
    job,
    registry_auth,
    template,
    user,
    volume,
)

__all__ = [
    "api_key",
    "blog",
    "email_claim",
    "endpoint",
    "host",
    "instance",
    "job",
    "registry_auth",
    "template",
    "user",
    "volume",
]
