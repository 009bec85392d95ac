"""The ids a request gives what it creates and the commands it sends.

Without an Idempotency-Key they are new each time. With one, they are fixed by the key's seed
(`services/api/idempotency.py`), so a retry of a request that may have been applied (its answer
lost, its api process dead, a 503 "may or may not have been applied") creates the same resource
and sends the same commands: the deciders recognise a command they have already taken and answer
with the state it made, instead of making a second resource."""

from __future__ import annotations

from typing import Any

from litestar import Request

from events.ids import derived_id, new_id

SEED = "idempotency_seed"
RETRY = "idempotency_retry"


def seed_of(request: Request[Any, Any, Any] | None) -> str | None:
    """The request's idempotency seed: None without an Idempotency-Key."""
    if request is None:
        return None
    seed: str | None = request.scope.get("state", {}).get(SEED)
    return seed


def new_resource_id(request: Request[Any, Any, Any]) -> str:
    """The id of the resource this request creates (a UUIDv7 made when its key was first seen, so
    ids still sort by creation)."""
    return seed_of(request) or new_id()


def derived(request: Request[Any, Any, Any] | None, *parts: str) -> str:
    """Another id of this request's, named by `parts` (a command, a token family, …)."""
    seed = seed_of(request)
    return derived_id(seed, *parts) if seed else new_id()


def is_retry(request: Request[Any, Any, Any]) -> bool:
    """A retry of a key whose first attempt may have been applied before its answer was lost."""
    return bool(request.scope.get("state", {}).get(RETRY))
