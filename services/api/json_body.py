"""The api's Request: a JSON body nested too deeply for the decoder is the client's error (400).

msgspec gives up on deep nesting (10,000 `[`) with a RecursionError rather than a DecodeError,
which Litestar lets through and which would otherwise be reported as a 500. It is caught here, where
the body is decoded, so a RecursionError anywhere else is still treated as the bug it would be."""

from __future__ import annotations

from typing import Any

from litestar import Request

from services.errors import BadRequest


class JsonBodyRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise BadRequest(
                "request body is not valid JSON: it is nested too deeply; send a flatter document"
            ) from None
