"""Registry credentials: the saved ones (never their passwords), save one, remove one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from services.api.registry_auth import RegistryAuthIn, RegistryAuthOut
from services.console.answers import after_post
from services.console.forms import body_of, form_of
from services.console.render import page
from services.console.rest import rest_of

HERE = "/console/registry-auth"


async def _page(
    request: Request[Any, Any, Any],
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Template:
    credentials = await rest_of(request).listed("/registry-auth", request, RegistryAuthOut)
    # A password typed in is never sent back to the browser, even after an error.
    kept = {k: v for k, v in (form or {}).items() if k != "password"}
    return page(
        request, "registry_auth.html", status_code, credentials=credentials, error=error, form=kept
    )


@get(HERE, name="console:registry-auth")
async def registry_auth_page(request: Request[Any, Any, Any]) -> Template:
    return await _page(request)


@post(HERE)
async def create_registry_auth(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)

    async def create() -> RegistryAuthOut:
        body = body_of(form, RegistryAuthIn)
        return await rest_of(request).call(
            "POST", "/registry-auth", request, RegistryAuthOut, data=body
        )

    return await after_post(HERE, create, lambda code, say: _page(request, code, say, form))


@post(HERE + "/{auth_id:str}/delete")
async def delete_registry_auth(
    request: Request[Any, Any, Any], auth_id: FromPath[str]
) -> Response[Any]:
    return await after_post(
        HERE,
        lambda: rest_of(request).call(
            "DELETE", "/registry-auth/{auth_id:str}", request, object, auth_id=auth_id
        ),
        lambda code, say: _page(request, code, say),
    )
