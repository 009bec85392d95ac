"""Request bodies read and JSON responses sent at the ASGI level, for what runs ahead of
Litestar's handlers (the idempotency middleware, the worker protocol's front)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.types import Receive, Scope, Send

from services.api.body_limit import limit_for
from services.errors import ErrorBody, ErrorResponse, error_type


class ClientGone(Exception):
    """The client disconnected before its body was complete: nothing to run, no one to answer."""


def error_body(code: int, message: str) -> bytes:
    return msgspec.json.encode(ErrorResponse(ErrorBody(code, error_type(code), message)))


async def read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole body, or None as soon as it is known to pass the route's limit: announced by
    Content-Length, or read so far. Chunks are joined once (repeated `+=` is quadratic)."""
    limit = limit_for(scope["path"])
    announced = dict(scope["headers"]).get(b"content-length")
    if announced is not None and announced.strip().isdigit() and int(announced) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
