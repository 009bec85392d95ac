"""Serverless: endpoints with their workers and queues, create one, and each endpoint's page with
its health, a job tester (input JSON in, the job's answer out: `runsync`'s own route) and the
`runpod` SDK snippet for it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from services.api.catalog import GpuTypeOut
from services.api.endpoints import EndpointIn, EndpointOut
from services.api.errors import error_response
from services.api.instances import public_base_url
from services.api.jobs import EndpointHealthOut
from services.api.templates import TemplateOut
from services.console.answers import see_other
from services.console.forms import body_of, form_of
from services.console.render import SECURITY_HEADERS, page
from services.console.rest import rest_of
from services.errors import GpuWorkerError

HERE = "/console/serverless"
# How long the tester's runsync waits for the job before answering with its status so far.
TESTER_WAIT_MS = 30_000
FIELDS = ("name", "templateId", "gpuIds", "workersMin", "workersMax", "idleTimeout")


async def _list_page(
    request: Request[Any, Any, Any],
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Template:
    rest = rest_of(request)
    return page(
        request,
        "serverless.html",
        status_code,
        endpoints=await rest.listed("/endpoints", request, EndpointOut),
        templates=await rest.listed("/templates", request, TemplateOut),
        gpus=await rest.listed("/gpu-types", request, GpuTypeOut),
        error=error,
        form=form or {},
    )


@get(HERE, name="console:serverless")
async def serverless_page(request: Request[Any, Any, Any]) -> Template:
    return await _list_page(request)


@post(HERE)
async def create_endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await form_of(request)
    try:
        body = body_of({k: form[k] for k in FIELDS if k in form}, EndpointIn)
        created = await rest_of(request).call("POST", "/endpoints", request, EndpointOut, data=body)
    except GpuWorkerError as exc:
        return await _list_page(request, exc.code, exc.message, form)
    return see_other(f"{HERE}/{created.id}")


@get(HERE + "/{endpoint_id:str}", name="console:endpoint")
async def endpoint_page(request: Request[Any, Any, Any], endpoint_id: FromPath[str]) -> Template:
    rest = rest_of(request)
    endpoint = await rest.call(
        "GET", "/endpoints/{endpoint_id:str}", request, EndpointOut, endpoint_id=endpoint_id
    )
    health = await rest.call(
        "GET",
        "/endpoints/{endpoint_id:str}/health",
        request,
        EndpointHealthOut,
        endpoint_id=endpoint_id,
    )
    return page(
        request,
        "endpoint.html",
        endpoint=endpoint,
        health=health,
        base=public_base_url(request).rstrip("/"),
        wait_ms=TESTER_WAIT_MS,
    )


def _json(body: bytes) -> Response[bytes]:
    return Response(body, media_type="application/json", headers=SECURITY_HEADERS)


@post(HERE + "/{endpoint_id:str}/runsync")
async def test_job(request: Request[Any, Any, Any], endpoint_id: FromPath[str]) -> Response[Any]:
    """The tester's request body is `runsync`'s (`{"input": …}`), sent by the page's script
    with its CSRF token in a header; the answer is `runsync`'s, or its error in the API's shape."""
    try:
        answer = await rest_of(request).call(
            "POST",
            "/endpoints/{endpoint_id:str}/runsync",
            request,
            msgspec.Raw,
            endpoint_id=endpoint_id,
            wait=TESTER_WAIT_MS,
        )
    except GpuWorkerError as exc:
        return error_response(exc.code, exc.message)
    return _json(bytes(answer))


@get(HERE + "/{endpoint_id:str}/status/{job_id:str}")
async def job_status(
    request: Request[Any, Any, Any], endpoint_id: FromPath[str], job_id: FromPath[str]
) -> Response[Any]:
    """A tested job's status, for the tester to follow a job that outlasted its wait."""
    try:
        answer = await rest_of(request).call(
            "GET",
            "/endpoints/{endpoint_id:str}/status/{job_id:str}",
            request,
            msgspec.Raw,
            endpoint_id=endpoint_id,
            job_id=job_id,
        )
    except GpuWorkerError as exc:
        return error_response(exc.code, exc.message)
    return _json(bytes(answer))
