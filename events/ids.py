"""Identifiers: UUIDv7 for anything new, UUIDv5 where an id must be derived from a natural key."""

import uuid

import uuid_utils

_NAMESPACE = uuid.UUID("6f1d7c62-3a4e-4b8f-9a57-0d3c1e2f4a5b")


def new_id() -> str:
    """A time-ordered UUIDv7, so ids sort by creation and index well."""
    return str(uuid_utils.uuid7())


def derived_id(*parts: str) -> str:
    """A stable UUIDv5 of natural-key parts (e.g. a normalised email)."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))
