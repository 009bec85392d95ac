"""API keys: the list (names and dates, never keys), create one (its key shown on that one answer,
with a copy button, and never again), revoke one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from services.api.api_keys import ApiKeyIn, ApiKeyOut, NewApiKeyOut
from services.console.answers import after_post
from services.console.forms import body_of, form_of
from services.console.render import page
from services.console.rest import rest_of
from services.errors import GpuWorkerError

HERE = "/console/api-keys"


async def _page(
    request: Request[Any, Any, Any],
    status_code: int = 200,
    error: str | None = None,
    created: NewApiKeyOut | None = None,
) -> Template:
    keys = await rest_of(request).listed("/api-keys", request, ApiKeyOut)
    return page(request, "api_keys.html", status_code, keys=keys, error=error, created=created)


@get(HERE, name="console:api-keys")
async def api_keys_page(request: Request[Any, Any, Any]) -> Template:
    return await _page(request)


@post(HERE)
async def create_api_key(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)
    try:
        body = body_of(form, ApiKeyIn)
        created = await rest_of(request).call("POST", "/api-keys", request, NewApiKeyOut, data=body)
    except GpuWorkerError as exc:
        return await _page(request, exc.code, exc.message)
    # Answered here, not after a redirect: this response is the only one that holds the key.
    return await _page(request, created=created)


@post(HERE + "/{key_id:str}/revoke")
async def revoke_api_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[Any]:
    return await after_post(
        HERE,
        lambda: rest_of(request).call(
            "DELETE", "/api-keys/{key_id:str}", request, object, key_id=key_id
        ),
        lambda code, say: _page(request, code, say),
    )
