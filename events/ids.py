"""Identifiers: UUIDv7 for anything new, UUIDv5 where an id must be derived from a natural key."""

import uuid_utils

NAMESPACE = "6f1d7c62-3a4e-4b8f-9a57-0d3c1e2f4a5b"
# uuid_utils' uuid5 (Rust) gives the stdlib's very ids in a tenth of the time: the deciders derive
# several per command. tests/test_ids.py holds the two equal, since stored ids must never change.
_NAMESPACE = uuid_utils.UUID(NAMESPACE)


def new_id() -> str:
    """A time-ordered UUIDv7, so ids sort by creation and index well."""
    return str(uuid_utils.uuid7())


def derived_id(*parts: str) -> str:
    """A stable UUIDv5 of natural-key parts (e.g. a normalised email)."""
    name = "\x1f".join(parts)
    if not name.isascii():
        name.encode()  # a lone surrogate fails here as with the stdlib (UnicodeEncodeError)
    return str(uuid_utils.uuid5(_NAMESPACE, name))
