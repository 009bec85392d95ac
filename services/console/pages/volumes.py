"""Network volumes: the list with sizes and costs, create one in a data center, delete one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from services.api.catalog import DatacenterOut
from services.api.volumes import VolumeIn, VolumeOut
from services.console.answers import after_post
from services.console.forms import body_of, form_of
from services.console.render import page
from services.console.rest import rest_of

HERE = "/console/volumes"


async def _page(
    request: Request[Any, Any, Any],
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Template:
    rest = rest_of(request)
    return page(
        request,
        "volumes.html",
        status_code,
        volumes=await rest.listed("/volumes", request, VolumeOut),
        datacenters=await rest.listed("/datacenters", request, DatacenterOut),
        error=error,
        form=form or {},
    )


@get(HERE, name="console:volumes")
async def volumes_page(request: Request[Any, Any, Any]) -> Template:
    return await _page(request)


@post(HERE)
async def create_volume(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)

    async def create() -> VolumeOut:
        body = body_of(form, VolumeIn)
        return await rest_of(request).call("POST", "/volumes", request, VolumeOut, data=body)

    return await after_post(HERE, create, lambda code, say: _page(request, code, say, form))


@post(HERE + "/{volume_id:str}/delete")
async def delete_volume(request: Request[Any, Any, Any], volume_id: FromPath[str]) -> Response[Any]:
    return await after_post(
        HERE,
        lambda: rest_of(request).call(
            "DELETE", "/volumes/{volume_id:str}", request, object, volume_id=volume_id
        ),
        lambda code, say: _page(request, code, say),
    )
