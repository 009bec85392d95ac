"""GET /docs/asyncapi.json: the event catalogue as AsyncAPI 3.0 (`events.asyncapi`), public like the
OpenAPI document beside it, so a team can subscribe to the stream without reading the code."""

from __future__ import annotations

from functools import cache

import msgspec
from litestar import MediaType, Response, get

from events.asyncapi import document


@cache
def _encoded() -> bytes:
    # The catalogue is fixed for the life of the process: build it once.
    return msgspec.json.encode(document())


@get("/docs/asyncapi.json", tags=["docs"], summary="The event catalogue (AsyncAPI 3.0)")
async def asyncapi() -> Response[bytes]:
    return Response(_encoded(), media_type=MediaType.JSON)
