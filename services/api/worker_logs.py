"""GET /endpoints/{id}/workers/{workerId}/logs: what a serverless worker's container printed, from
the agent of its host, as an instance's logs are read (services/api/instance_logs.py): the same
protocol, parameters and limits. Only while the worker lives (its container is removed once it
stopped), and only for the endpoint's owner; anyone else gets 404, as for the endpoint itself."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import Stream

from services.api.endpoints import owned_endpoint
from services.api.instance_logs import Follow, Since, Tail, Timestamps, log_stream
from services.container_logs import DEFAULT_TAIL
from services.errors import NotFound


@get(
    "/endpoints/{endpoint_id:str}/workers/{worker_id:str}/logs",
    tags=["endpoints"],
    summary="What a worker's container printed (follow=true streams new lines)",
    media_type="text/plain; charset=utf-8",
)
async def worker_logs(
    request: Request[Any, Any, Any],
    endpoint_id: FromPath[str],
    worker_id: FromPath[str],
    tail: Tail = DEFAULT_TAIL,
    since: Since = None,
    follow: Follow = False,
    timestamps: Timestamps = False,
) -> Stream:
    endpoint = await owned_endpoint(request, endpoint_id)
    worker = endpoint.live_workers.get(worker_id)
    if worker is None:
        raise NotFound("worker not found: it never ran for this endpoint, or it has stopped")
    return await log_stream(
        request, worker.placement.host_id, worker.id, tail, since, follow, timestamps
    )
