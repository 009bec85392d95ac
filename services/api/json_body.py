"""The api's Request: what a JSON body cannot be is the client's error (400), found where the body
is decoded.

- Nested too deeply for the decoder: msgspec gives up on deep nesting (10,000 `[`) with a
  RecursionError rather than a DecodeError, which Litestar lets through and which would otherwise
  be reported as a 500. It is caught here, so a RecursionError anywhere else is still treated as
  the bug it would be.
- A string holding NUL (U+0000): nothing downstream can keep it (PostgreSQL's text and jsonb refuse
  it), and an event holding it once stopped a projection for every customer. Refused with the
  field's name."""

from __future__ import annotations

from typing import Any

from litestar import Request

from services.errors import BadRequest

_NUL = "\x00"
NUL_REFUSAL = "holds a NUL character (\\u0000), which cannot be stored; remove it"


def nul_path(value: Any, path: str = "") -> str | None:
    """Where in a decoded JSON value a string (or a key) holds NUL; None if nowhere."""
    if isinstance(value, str):
        return path if _NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if _NUL in str(key):
                return here
            found = nul_path(item, here)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class JsonBodyRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise BadRequest(
                "request body is not valid JSON: it is nested too deeply; send a flatter document"
            ) from None
        # JSON can only spell NUL as an escape: the walk runs for such bodies alone.
        if b"\\u0000" in await self.body():
            where = nul_path(value)
            if where is not None:
                raise BadRequest(f"field `{where or 'body'}`: {NUL_REFUSAL}")
        return value
