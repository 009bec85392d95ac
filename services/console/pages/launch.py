"""Launch an instance: GPU types with their prices and live availability per data center (a sold-out
type is shown, and launching it gives the API's capacity message), a template, disks, a network
volume, and what it will cost per hour before it is launched.

The form is `POST /instances`' own body; the estimate is the create's own cost
(`launch_cost_per_hour`), the figure the balance and spend limit checks use."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Template

from services.api import read_models
from services.api.catalog import DatacenterOut, GpuTypeOut
from services.api.context import context_of
from services.api.instances import (
    InstanceIn,
    InstanceOut,
    launch_container,
    launch_cost_per_hour,
)
from services.api.templates import TEMPLATES, TemplateOut, visible_to
from services.api.volumes import VolumeOut
from services.console.answers import see_other
from services.console.forms import body_of, env_of, form_of, lines_of
from services.console.render import SECURITY_HEADERS, page
from services.console.rest import rest_of
from services.errors import GpuWorkerError

# The form's fields are the body's (camelCase), in the order people fill them in.
FIELDS = (
    "name",
    "gpuTypeId",
    "cloudType",
    "gpuCount",
    "dataCenterId",
    "templateId",
    "containerDiskInGb",
    "volumeInGb",
    "networkVolumeId",
    "ports",
    "env",
)


def estimate_body(form: Mapping[str, str]) -> InstanceIn:
    """The body as far as it is filled in: a name does not change the price."""
    return instance_body({"name": "estimate", **form})


def instance_body(form: Mapping[str, str]) -> InstanceIn:
    values: dict[str, Any] = {k: form[k] for k in FIELDS if form.get(k)}
    if "ports" in values:
        values["ports"] = lines_of(values["ports"])
    if "env" in values:
        values["env"] = env_of(values["env"])
    return body_of(values, InstanceIn)


async def estimate_of(request: Request[Any, Any, Any], data: InstanceIn) -> int | None:
    """Micro-USD per hour for `data`, as the create would count it; None without a template
    the user may use."""
    state = await read_models.get(context_of(request).pool, TEMPLATES, data.template_id)
    try:
        template = visible_to(state, request.user.id)
    except GpuWorkerError:
        return None
    now = datetime.now(UTC)
    return launch_cost_per_hour(data, launch_container(template.container, data), now)


async def _launch_page(
    request: Request[Any, Any, Any],
    form: Mapping[str, str],
    status_code: int = 200,
    error: str | None = None,
) -> Template:
    rest = rest_of(request)
    gpus = await rest.listed("/gpu-types", request, GpuTypeOut)
    datacenters = await rest.listed("/datacenters", request, DatacenterOut)
    templates = await rest.listed("/templates", request, TemplateOut)
    volumes = [
        v
        for v in await rest.listed("/volumes", request, VolumeOut)
        if v.status not in ("DELETING", "DELETED", "FAILED")
    ]
    chosen = {
        "gpuTypeId": gpus[0].id if gpus else "",
        "cloudType": "SECURE",
        "gpuCount": "1",
        "templateId": templates[0].id if templates else "",
        **form,
    }
    estimate = None
    with contextlib.suppress(GpuWorkerError):
        estimate = await estimate_of(request, estimate_body(chosen))
    return page(
        request,
        "launch.html",
        status_code,
        gpus=gpus,
        datacenters=datacenters,
        templates=templates,
        volumes=volumes,
        form=chosen,
        estimate=estimate,
        error=error,
    )


@get("/console/launch", name="console:launch")
async def launch_page(request: Request[Any, Any, Any]) -> Template:
    return await _launch_page(request, {})


@get("/console/launch/estimate")
async def estimate(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The estimate for the form as it is filled in now (the page's script asks as it changes)."""
    try:
        micros = await estimate_of(request, estimate_body(dict(request.query_params)))
        body: dict[str, Any] = {"perHourMicros": micros}
    except GpuWorkerError as exc:
        body = {"perHourMicros": None, "problem": exc.message}
    return Response(body, headers=SECURITY_HEADERS)


@post("/console/launch")
async def launch(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)
    try:
        created = await rest_of(request).call(
            "POST", "/instances", request, InstanceOut, data=instance_body(form)
        )
    except GpuWorkerError as exc:
        return await _launch_page(request, form, exc.code, exc.message)
    return see_other(f"/console/instances/{created.id}")
