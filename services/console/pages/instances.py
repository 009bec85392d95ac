"""Instances: the list and each one's page, its `actions` as buttons, and live updates.

Live updates are server-sent events from the read model: the stream wakes whenever the instances
projection's checkpoint moves (the api's LISTEN on checkpoints, `CheckpointWatcher`), reads the
user's instances through `GET /instances` and sends those whose status, actions or cost changed.
A quiet stream still sends every instance again every `REFRESH_S` (cost to date grows while one
runs) and a comment line that keeps proxies from closing it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage, Template

from services.api.connection_limits import ConnectionLimiter
from services.api.context import context_of
from services.api.instances import INSTANCES, InstanceOut
from services.console.answers import see_other
from services.console.render import SECURITY_HEADERS, page
from services.console.rest import rest_of
from services.errors import GpuWorkerError, NotFound

REFRESH_S = 10.0
# At most one read per stream in this time, however often checkpoints move.
COALESCE_S = 0.25
LIVE_STREAMS_PER_USER = 8

# The routes each button posts to: the REST API's own.
ACTIONS = {
    "start": ("POST", "/instances/{instance_id:str}/start"),
    "stop": ("POST", "/instances/{instance_id:str}/stop"),
    "restart": ("POST", "/instances/{instance_id:str}/restart"),
    "terminate": ("DELETE", "/instances/{instance_id:str}"),
}


class LiveInstance(msgspec.Struct, rename="camel", kw_only=True):
    """What a page updates in place."""

    id: str
    status: str
    desired_status: str
    actions: list[str]
    cost_to_date: float
    cost_per_hr: float
    failure_reason: str | None
    stop_reason: str | None
    urls: list[str]


def _live(view: InstanceOut) -> LiveInstance:
    return LiveInstance(
        id=view.id,
        status=view.status,
        desired_status=view.desired_status,
        actions=view.actions,
        cost_to_date=view.cost_to_date,
        cost_per_hr=view.cost_per_hr,
        failure_reason=view.failure_reason,
        stop_reason=view.stop_reason,
        urls=view.urls if view.status == "RUNNING" else [],
    )


@get("/console/instances", name="console:instances")
async def instances_page(request: Request[Any, Any, Any]) -> Template:
    instances = await rest_of(request).listed("/instances", request, InstanceOut)
    return page(request, "instances.html", instances=instances)


async def _one(request: Request[Any, Any, Any], instance_id: str) -> InstanceOut:
    return await rest_of(request).call(
        "GET", "/instances/{instance_id:str}", request, InstanceOut, instance_id=instance_id
    )


@get("/console/instances/{instance_id:str}", name="console:instance")
async def instance_page(request: Request[Any, Any, Any], instance_id: FromPath[str]) -> Template:
    return page(request, "instance.html", instance=await _one(request, instance_id))


@post("/console/instances/{instance_id:str}/{action:str}")
async def instance_action(
    request: Request[Any, Any, Any], instance_id: FromPath[str], action: FromPath[str]
) -> Response[Any]:
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}; an instance offers {', '.join(ACTIONS)}")
    method, path = ACTIONS[action]
    try:
        await rest_of(request).call(method, path, request, object, instance_id=instance_id)
    except GpuWorkerError as exc:
        if exc.code == 404:
            raise
        return page(
            request,
            "instance.html",
            exc.code,
            instance=await _one(request, instance_id),
            error=exc.message,
        )
    to = "/console/instances" if action == "terminate" else f"/console/instances/{instance_id}"
    return see_other(to)


def _limiter(request: Request[Any, Any, Any]) -> ConnectionLimiter:
    state = request.app.state
    if not hasattr(state, "console_live"):
        state.console_live = ConnectionLimiter(LIVE_STREAMS_PER_USER, "live console pages")
    limiter: ConnectionLimiter = state.console_live
    return limiter


@get("/console/instances/live", name="console:instances-live")
async def live(request: Request[Any, Any, Any]) -> ServerSentEvent:
    """`instance` events (a `LiveInstance` as JSON) for each of the user's instances that
    changed, and `gone` (its id) for one that no longer is."""
    watcher = context_of(request).watcher
    rest = rest_of(request)
    limiter = _limiter(request)
    user_id = request.user.id
    if limiter.open_for(user_id) >= limiter.per_user:
        with limiter.held(user_id):  # refused: the 429 in the limiter's words
            pass

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        sent: dict[str, LiveInstance] = {}
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        with limiter.held(user_id):
            while True:
                seen = watcher.seen(INSTANCES.name)
                now = {
                    v.id: _live(v) for v in await rest.listed("/instances", request, InstanceOut)
                }
                refresh = loop.time() - refreshed >= REFRESH_S
                if refresh:
                    refreshed = loop.time()
                for instance_id, current in now.items():
                    if refresh or sent.get(instance_id) != current:
                        data = msgspec.json.encode(current).decode()
                        yield ServerSentEventMessage(data=data, event="instance")
                for instance_id in sent.keys() - now.keys():
                    yield ServerSentEventMessage(data=instance_id, event="gone")
                sent = now
                if not await watcher.wait(INSTANCES.name, seen + 1, REFRESH_S):
                    yield ServerSentEventMessage(comment="still here")
                await asyncio.sleep(COALESCE_S)

    return ServerSentEvent(events(), headers=SECURITY_HEADERS)
