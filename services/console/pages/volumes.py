"""Network volumes: the list with sizes and costs, create one in a data center, delete one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from services.api.catalog import DatacenterOut
from services.api.volumes import VolumeIn, VolumeOut
from services.console.forms import body_of, form_of
from services.console.render import SECURITY_HEADERS, page
from services.console.rest import rest_of
from services.errors import GpuWorkerError

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
    try:
        body = body_of(form, VolumeIn)
        await rest_of(request).call("POST", "/volumes", request, VolumeOut, data=body)
    except GpuWorkerError as exc:
        return await _page(request, exc.code, exc.message, form)
    return Redirect(HERE, status_code=303, headers=SECURITY_HEADERS)


@post(HERE + "/{volume_id:str}/delete")
async def delete_volume(request: Request[Any, Any, Any], volume_id: str) -> Response[Any]:
    try:
        await rest_of(request).call(
            "DELETE", "/volumes/{volume_id:str}", request, object, volume_id=volume_id
        )
    except GpuWorkerError as exc:
        return await _page(request, exc.code, exc.message)
    return Redirect(HERE, status_code=303, headers=SECURITY_HEADERS)
