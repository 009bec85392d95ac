"""Templates: your own and the built-in ones, create one (image, command, disks, ports, env, a
registry credential), delete one of yours."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from services.api.registry_auth import RegistryAuthOut
from services.api.templates import TemplateIn, TemplateOut
from services.console.answers import after_post
from services.console.forms import body_of, env_of, form_of, lines_of
from services.console.render import page
from services.console.rest import rest_of

HERE = "/console/templates"
FIELDS = (
    "name",
    "imageName",
    "dockerStartCmd",
    "containerDiskInGb",
    "volumeInGb",
    "volumeMountPath",
    "ports",
    "env",
    "containerRegistryAuthId",
    "readme",
)


async def _page(
    request: Request[Any, Any, Any],
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Template:
    rest = rest_of(request)
    return page(
        request,
        "templates.html",
        status_code,
        templates=await rest.listed("/templates", request, TemplateOut),
        credentials=await rest.listed("/registry-auth", request, RegistryAuthOut),
        error=error,
        form=form or {},
    )


@get(HERE, name="console:templates")
async def templates_page(request: Request[Any, Any, Any]) -> Template:
    return await _page(request)


@post(HERE)
async def create_template(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)

    async def create() -> TemplateOut:
        values: dict[str, Any] = {k: form[k] for k in FIELDS if k in form}
        if "ports" in values:
            values["ports"] = lines_of(values["ports"])
        if "env" in values:
            values["env"] = env_of(values["env"])
        body = body_of(values, TemplateIn)
        return await rest_of(request).call("POST", "/templates", request, TemplateOut, data=body)

    return await after_post(HERE, create, lambda code, say: _page(request, code, say, form))


@post(HERE + "/{template_id:str}/delete")
async def delete_template(
    request: Request[Any, Any, Any], template_id: FromPath[str]
) -> Response[Any]:
    return await after_post(
        HERE,
        lambda: rest_of(request).call(
            "DELETE", "/templates/{template_id:str}", request, object, template_id=template_id
        ),
        lambda code, say: _page(request, code, say),
    )
