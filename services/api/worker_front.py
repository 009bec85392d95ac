"""The worker protocol (services/api/worker_protocol.py) served ahead of Litestar.

Why: it is serverless's hot path (every job costs a take and a done, and workers ping), and on it
Litestar's routing, middleware and request objects cost more of the api's CPU than the protocol's
own work does. Nothing that stack adds applies to these routes: they authenticate with the worker's
own token, never a user's; Idempotency-Key is the user API's; the body limit is the route's own.
What the front keeps: the seed's error shape for every refusal (services/api/errors.py's
`seed_error`, the same as Litestar's handlers), each route's body limit, and the Prometheus series
Litestar keeps for every route (services/api/request_metrics.py).

A request the front does not recognise (another method, another path shape) goes on to Litestar,
so a 404 or 405 there reads as it does on every other route. The controller in worker_protocol.py
documents the same routes in OpenAPI, and serves them in an app run without this front."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from services.api import read_models
from services.api.asgi_io import ClientGone, error_body, read_body, send_json
from services.api.body_limit import limit_for, too_large
from services.api.context import ApiContext
from services.api.errors import seed_error
from services.api.request_metrics import RouteMetrics
from services.api.worker_protocol import (
    PingQuery,
    WorkerCall,
    authenticated,
    done,
    ping,
    stop,
    stop_body,
    stream,
    take,
    taken_body,
)
from services.errors import BadRequest, PayloadTooLarge
from services.worker_env import ROUTE_METHODS, WORKER_ROUTES
from services.worker_wire import MAX_BATCH

_PREFIX = WORKER_ROUTES + "/"
# The routes whose path ends in a job id; the others end in the worker id.
_ABOUT_A_JOB = frozenset({"job-done", "job-stream"})
_INTEGER = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True)
class WorkerRoute:
    """A worker protocol request, as its path and method name it."""

    route: str
    endpoint_id: str
    worker_id: str
    job_id: str | None

    @property
    def template(self) -> str:
        """The route as Litestar names it (its `path_format`, the Prometheus `path` label)."""
        tail = "/{job_id}" if self.job_id is not None else ""
        return f"{WORKER_ROUTES}/{{endpoint_id}}/{self.route}/{{worker_id}}{tail}"


def route_of(method: str, path: str) -> WorkerRoute | None:
    """The worker protocol request at `path`, or None when it is not one (Litestar answers)."""
    if not path.startswith(_PREFIX):
        return None
    parts = path[len(_PREFIX) :].split("/")
    if len(parts) < 3 or ROUTE_METHODS.get(parts[1]) != method or not all(parts):
        return None
    if len(parts) != (4 if parts[1] in _ABOUT_A_JOB else 3):
        return None
    return WorkerRoute(parts[1], parts[0], parts[2], parts[3] if len(parts) == 4 else None)


def _query(scope: Scope) -> dict[str, str]:
    """Each parameter's first value, as Litestar takes it."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        query.setdefault(name, value)
    return query


def _integer(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"query parameter `{name}`: Expected `int`, got `str`")
    return int(value)


def _batch_size(query: dict[str, str]) -> int:
    size = _integer(query, "batch_size")
    if size is None:
        return 1
    if not 1 <= size <= MAX_BATCH:
        raise BadRequest(f"query parameter `batch_size`: Expected `int` in 1..{MAX_BATCH}")
    return size


# (status, body); a 204's body is empty.
Answer = tuple[int, bytes]
Body = Callable[[], Awaitable[bytes]]


async def _answer(ctx: ApiContext, scope: Scope, route: WorkerRoute, body: Body) -> Answer:
    """The route's answer; raises what Litestar's handlers would (rendered by `seed_error`)."""
    query = _query(scope)
    batch = route.route == "job-take-batch"
    if route.route in ("job-take", "job-take-batch"):
        v, size = _integer(query, "v"), _batch_size(query) if batch else 1
        jobs = await take(_call(ctx, scope, route), size, v)
        return (200, taken_body(jobs, batch)) if jobs else (204, b"")
    if route.route == "ping":
        ping_query = PingQuery(
            v=_integer(query, "v"),
            job_id=query.get("job_id"),
            status=query.get("status"),
            check=query.get("check"),
            reason=query.get("reason"),
        )
        return 200, await ping(_call(ctx, scope, route), ping_query)
    if route.route == "job-stop":
        job_ids = await stop(_call(ctx, scope, route))
        return (200, stop_body(job_ids)) if job_ids else (204, b"")
    call = _call(ctx, scope, route)
    job_id = read_models.checked_id(route.job_id or "", "job")
    posted = await body()
    if route.route == "job-done":
        return 200, await done(call, job_id, posted)
    return 200, await stream(call, job_id, posted)


def _call(ctx: ApiContext, scope: Scope, route: WorkerRoute) -> WorkerCall:
    authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    return authenticated(ctx, authorization.decode("latin-1"), route.endpoint_id, route.worker_id)


class WorkerFront:
    """What uvicorn serves: the worker protocol, then `inner` (the rest of the api) for anything
    else. `app` is the Litestar app whose lifespan makes the context the protocol needs."""

    def __init__(self, app: Litestar, inner: ASGIApp) -> None:
        self.app = app
        self.inner = inner
        self._metrics = RouteMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.inner(scope, receive, send)
            return
        route = route_of(scope["method"], scope["path"])
        ctx: ApiContext | None = getattr(self.app.state, "ctx", None)
        if route is None or ctx is None:
            await self.inner(scope, receive, send)
            return
        await self._serve(ctx, scope, receive, send, route)

    async def _serve(
        self, ctx: ApiContext, scope: HTTPScope, receive: Receive, send: Send, route: WorkerRoute
    ) -> None:
        method, template = scope["method"], route.template
        started = time.perf_counter()
        self._metrics.started(method, template)
        status = 500
        try:

            async def body() -> bytes:
                posted = await read_body(scope, receive)
                if posted is None:
                    raise PayloadTooLarge(too_large(limit_for(scope["path"])))
                return posted

            extra: list[tuple[bytes, bytes]] = []
            try:
                status, payload = await _answer(ctx, scope, route, body)
            except ClientGone:
                status = 499  # nginx's "client closed request": no one to answer
                return
            except Exception as exc:
                status, message, headers = seed_error(exc, f"{method} {scope['path']}")
                payload = error_body(status, message)
                extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
            if status == 204:
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send_json(send, status, payload, extra)
        finally:
            self._metrics.finished(method, template, status, time.perf_counter() - started)
