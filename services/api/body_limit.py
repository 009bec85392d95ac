"""The largest request body the api accepts, in one place.

Litestar enforces it for every handler; the idempotency middleware reads bodies before any handler
runs (to hash them), so it enforces the same limit itself, while reading."""

from __future__ import annotations

MAX_BODY_BYTES = 1024 * 1024
TOO_LARGE = f"request body is too large (limit {MAX_BODY_BYTES // (1024 * 1024)} MiB)"
