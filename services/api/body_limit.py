"""The largest request body the api accepts, in one place.

Litestar enforces it for every handler (a route may set its own); the idempotency middleware reads
bodies before any handler runs (to hash them), so it enforces the same limit itself, while reading.
Most routes take 1 MiB; a serverless job's input may be 10 MiB on `run` and 20 MiB on `runsync`,
and a worker's result or partial output 20 MiB."""

from __future__ import annotations

import re

MAX_BODY_BYTES = 1024 * 1024
RUN_BODY_BYTES = 10 * 1024 * 1024
RUNSYNC_BODY_BYTES = 20 * 1024 * 1024
# A result of RUNSYNC_BODY_BYTES of output, and room for its `{"output": …}`.
RESULT_BODY_BYTES = RUNSYNC_BODY_BYTES + 64 * 1024

_LARGER = (
    (re.compile(r"^/endpoints/[^/]+/run/?$"), RUN_BODY_BYTES),
    (re.compile(r"^/endpoints/[^/]+/runsync/?$"), RUNSYNC_BODY_BYTES),
    (re.compile(r"^/worker/v1/[^/]+/job-(done|stream)/"), RESULT_BODY_BYTES),
)


def limit_for(path: str) -> int:
    """The body limit of the route at `path`."""
    for pattern, limit in _LARGER:
        if pattern.match(path):
            return limit
    return MAX_BODY_BYTES


def too_large(limit: int) -> str:
    return f"request body is too large (limit {limit // (1024 * 1024)} MiB)"


TOO_LARGE = too_large(MAX_BODY_BYTES)
