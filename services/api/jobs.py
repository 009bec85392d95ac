"""The job API under /endpoints/:id/, in RunPod's shape, so that the runpod SDK
(`runpod.endpoint_url_base = "<api>/endpoints"`, an API key as `runpod.api_key`) works unchanged:
`run`, `runsync`, `status/:jobId`, `stream/:jobId`, `cancel/:jobId`, `retry/:jobId`,
`purge-queue`, `health`.

- `run` stores the input (services/api/job_payloads.py), then submits the job; it answers
  `{"id", "status": "IN_QUEUE"}` only once both are durable (the job's event acknowledged by
  JetStream), so nothing acknowledged is lost.
- `runsync` does the same, then waits up to `?wait=` ms (default 90 s) for the job to be final
  (woken by the jobs projection's NOTIFY, services/api/job_waits.py), and answers its status.
- Status: `{"id", "status", "delayTime", "executionTime", "workerId", "output" | "error"}`, times
  in ms. A final job's status and result are kept GPUWORKER_JOB_RETENTION s after `run` (30 min)
  and GPUWORKER_JOB_SYNC_RETENTION s after `runsync` (5 min), then it is a 404.
- Bodies: `{"input": …, "webhook"?, "policy"?: {"executionTimeout", "ttl", "lowPriority"}}`;
  `run` takes 10 MiB, `runsync` 20 MiB (413 above)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from msgspec import Meta

from events.job import JobSpec
from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.body_limit import RUN_BODY_BYTES, RUNSYNC_BODY_BYTES
from services.api.context import context_of
from services.api.endpoint_activity import activity_of
from services.api.endpoints import owned_endpoint
from services.api.job_payloads import JobPayloads
from services.api.request_ids import derived, new_resource_id
from services.command_wire import Reply
from services.deciders.job import (
    MAX_TIMEOUT_MS,
    NOT_FOUND,
    CancelJob,
    JobState,
    RetryJob,
    SubmitJob,
)
from services.errors import BadRequest, NotFound, PaymentRequired
from services.processes.job_dispatcher import PurgeQueue, PurgeResult
from services.webhook_policy import WebhookRefused, check_url

JOBS = PROJECTIONS["jobs"]
DEFAULT_TTL_MS = 24 * 3600 * 1000
DEFAULT_WAIT_MS = 90_000
MAX_WAIT_MS = 300_000

Milliseconds = Annotated[int, Meta(ge=1_000, le=MAX_TIMEOUT_MS)]


class PolicyIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    execution_timeout: Milliseconds | None = None
    ttl: Milliseconds | None = None
    low_priority: bool = False


class RunIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Any JSON value, kept as its bytes: never decoded, only stored and handed to the worker.
    input: msgspec.Raw
    webhook: Annotated[str, Meta(max_length=2048)] | None = None
    policy: PolicyIn | None = None

    def __post_init__(self) -> None:
        if bytes(self.input).strip() == b"null":
            raise ValueError("field `input`: required (any JSON value but null)")


def _field_path(message: str) -> tuple[str, str]:
    """msgspec's "… - at `$.policy.ttl`" as ("policy.ttl", "…")."""
    text, _, where = message.rpartition(" - at `$.")
    if not text:
        return "", message
    return where.rstrip("`"), text


async def run_body(request: Request[Any, Any, Any]) -> RunIn:
    """The body, decoded here rather than by Litestar: `input` stays the bytes it was sent as
    (Litestar would decode it into Python objects first)."""
    try:
        return msgspec.json.decode(await request.body(), type=RunIn)
    except msgspec.ValidationError as exc:
        path, problem = _field_path(str(exc))
        if "unknown field" in problem:
            raise BadRequest(problem.replace("Object contains", "request body contains")) from None
        if problem.startswith("field `"):  # the body's own check names its field
            raise BadRequest(problem) from None
        raise BadRequest(
            f"field `{path}`: {problem}" if path else f"request body: {problem}"
        ) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


class Queued(msgspec.Struct, frozen=True):
    id: str
    status: str


class JobOut(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    id: str
    status: str
    delay_time: int | None = None
    execution_time: int | None = None
    worker_id: str | None = None
    retries: int = 0
    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: str | None = None


class WorkerResult(msgspec.Struct, kw_only=True):
    """A worker's done body as the SDK sends it: `{"output": …}` and/or `{"error": …}`."""

    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET

    @property
    def failed(self) -> bool:
        return self.error is not msgspec.UNSET and bytes(self.error).strip() not in (
            b"null",
            b'""',
        )

    def error_text(self) -> str | None:
        if not self.failed:
            return None
        assert isinstance(self.error, msgspec.Raw)
        value = msgspec.json.decode(self.error)
        return value if isinstance(value, str) else bytes(self.error).decode()


class Partial(msgspec.Struct):
    output: msgspec.Raw


class StreamOut(msgspec.Struct, frozen=True):
    status: str
    stream: list[Partial]


class HealthJobs(msgspec.Struct, rename="camel", kw_only=True):
    completed: int
    failed: int
    in_progress: int
    in_queue: int
    retried: int


class HealthWorkers(msgspec.Struct, kw_only=True, omit_defaults=True):
    idle: int
    running: int
    initializing: int
    unhealthy: int
    # What the unhealthy workers reported (the SDK's failed fitness checks), if any.
    reasons: list[str] = []


class EndpointHealthOut(msgspec.Struct):
    jobs: HealthJobs
    workers: HealthWorkers


class PurgeOut(msgspec.Struct, frozen=True):
    removed: int
    status: str


def _json(value: msgspec.Struct, status_code: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status_code, media_type=MediaType.JSON)


def expired(state: JobState, now_ms: int | None = None) -> bool:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return state.expires_ms is not None and state.expires_ms < now_ms


async def job_view(payloads: JobPayloads, state: JobState) -> JobOut:
    out = JobOut(
        id=state.id,
        status=state.status,
        delay_time=state.delay_ms,
        execution_time=state.execution_ms,
        worker_id=state.worker_id,
        retries=state.retries,
        error=state.reason if state.status in ("FAILED", "CANCELLED", "TIMED_OUT") else None,
    )
    if state.result is not None:
        body = await payloads.get(state.id, state.result)
        if body is not None:
            result = msgspec.json.decode(body, type=WorkerResult)
            out.output = result.output
            out.error = result.error_text() or out.error
    return out


async def owned_job(request: Request[Any, Any, Any], endpoint_id: str, job_id: str) -> JobState:
    """The job, if it is the user's, of this endpoint, and still kept."""
    state: JobState | None = await read_models.get(context_of(request).pool, JOBS, job_id)
    if (
        state is None
        or state.owner_id != request.user.id
        or state.endpoint_id != endpoint_id
        or expired(state)
    ):
        raise NotFound(f"{NOT_FOUND} (a finished job is kept only for its retention)")
    return state


class JobController(Controller):
    path = "/endpoints/{endpoint_id:str}"
    tags = ["jobs"]

    async def _submit(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: str,
        data: RunIn,
        sync: bool,
        job_id: str | None = None,
    ) -> JobState:
        ctx = context_of(request)
        endpoint = await owned_endpoint(request, endpoint_id)
        if endpoint.suspended is not None:
            # A job would bring workers up: billing holds the endpoint at zero until its owner
            # can pay (its decision, so no race with a credit still on its way to the ledger).
            raise PaymentRequired(f"endpoint {endpoint.id} is {endpoint.suspended}")
        if data.webhook is not None:
            try:
                check_url(data.webhook, ctx.settings.webhook_allowed_hosts)
            except WebhookRefused as exc:
                raise BadRequest(f"field `webhook`: {exc}") from None
        policy = data.policy or PolicyIn()
        job_id = job_id or new_resource_id(request)
        reference = await ctx.payloads.put(job_id, bytes(data.input))
        settings = ctx.settings
        spec = JobSpec(
            endpoint_id=endpoint.id,
            input=reference,
            webhook=data.webhook,
            execution_timeout_ms=policy.execution_timeout or endpoint.settings.execution_timeout_ms,
            ttl_ms=policy.ttl or DEFAULT_TTL_MS,
            low_priority=policy.low_priority,
            retention_s=settings.job_sync_retention_s if sync else settings.job_retention_s,
            sync=sync,
        )
        command = SubmitJob(actor=request.user.id, at=datetime.now(UTC), spec=spec)
        state: JobState = await ctx.execute(JOBS, job_id, command, request)
        return state

    @post(
        "/run",
        status_code=200,
        summary="Queue a job: {id, status: IN_QUEUE}",
        request_max_body_size=RUN_BODY_BYTES,
    )
    async def run(self, request: Request[Any, Any, Any], endpoint_id: FromPath[str]) -> Queued:
        state = await self._submit(request, endpoint_id, await run_body(request), sync=False)
        return Queued(id=state.id, status=state.status)

    @post(
        "/runsync",
        status_code=200,
        summary="Run a job and wait for it (up to ?wait= ms, default 90 s)",
        request_max_body_size=RUNSYNC_BODY_BYTES,
    )
    async def runsync(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        wait: Annotated[int, QueryParameter(ge=0, le=MAX_WAIT_MS)] = DEFAULT_WAIT_MS,
    ) -> Response[bytes]:
        ctx = context_of(request)
        body = await run_body(request)
        job_id = new_resource_id(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait / 1000
        # Watched from before the submit: a fast job is often final before the submit returns.
        with ctx.job_waits.watching(job_id) as watch:
            state = await self._submit(request, endpoint_id, body, sync=True, job_id=job_id)
            while not state.final and (left := deadline - loop.time()) > 0:
                await watch.wait(left)
                state = watch.settled or await read_models.get(ctx.pool, JOBS, state.id) or state
        return _json(await job_view(ctx.payloads, state))

    @get("/status/{job_id:str}", summary="A job's status, and its output or error once final")
    async def status(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str], job_id: FromPath[str]
    ) -> Response[bytes]:
        state = await owned_job(request, endpoint_id, job_id)
        return _json(await job_view(context_of(request).payloads, state))

    @get("/stream/{job_id:str}", summary="A streaming job's partial outputs not read before")
    async def stream(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str], job_id: FromPath[str]
    ) -> Response[bytes]:
        state = await owned_job(request, endpoint_id, job_id)
        partials = await context_of(request).payloads.take_partials(state.id)
        return _json(StreamOut(state.status, [Partial(msgspec.Raw(p)) for p in partials]))

    @post("/cancel/{job_id:str}", status_code=200, summary="Cancel a queued or running job")
    async def cancel(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str], job_id: FromPath[str]
    ) -> Response[bytes]:
        ctx = context_of(request)
        current = await owned_job(request, endpoint_id, job_id)
        command = CancelJob(actor=request.user.id, at=datetime.now(UTC))
        state: JobState = await ctx.execute(JOBS, current.id, command, request)
        return _json(await job_view(ctx.payloads, state))

    @post("/retry/{job_id:str}", status_code=200, summary="Queue a FAILED or TIMED_OUT job again")
    async def retry(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str], job_id: FromPath[str]
    ) -> Queued:
        ctx = context_of(request)
        current = await owned_job(request, endpoint_id, job_id)
        command = RetryJob(actor=request.user.id, at=datetime.now(UTC))
        state: JobState = await ctx.execute(JOBS, current.id, command, request)
        return Queued(id=state.id, status=state.status)

    @post("/purge-queue", status_code=200, summary="Cancel every job still in the queue")
    async def purge_queue(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str]
    ) -> PurgeOut:
        ctx = context_of(request)
        endpoint = await owned_endpoint(request, endpoint_id)
        reply: Reply = await ctx.bus.send(
            "job_queue",
            endpoint.id,
            PurgeQueue(actor=request.user.id, at=datetime.now(UTC)),
            request.headers.get("x-request-id") or derived(request, "correlation"),
            derived(request, "command", "job_queue", endpoint.id, "PurgeQueue"),
        )
        await ctx.watcher.wait(JOBS.name, reply.sequence, ctx.settings.read_your_writes_timeout_s)
        result = msgspec.json.decode(reply.state, type=PurgeResult)
        return PurgeOut(removed=result.removed, status="completed")

    @get("/health", summary="Jobs and workers of the endpoint right now")
    async def health(
        self, request: Request[Any, Any, Any], endpoint_id: FromPath[str]
    ) -> EndpointHealthOut:
        ctx = context_of(request)
        endpoint = await owned_endpoint(request, endpoint_id)
        activity = (await activity_of(ctx.pool, [endpoint], ctx.settings.worker_lost_after_s))[
            endpoint.id
        ]
        return EndpointHealthOut(
            jobs=HealthJobs(
                completed=activity.completed,
                failed=activity.failed,
                in_progress=activity.in_progress,
                in_queue=activity.in_queue,
                retried=activity.retried,
            ),
            workers=HealthWorkers(
                idle=activity.workers_idle,
                running=activity.workers_running,
                initializing=activity.workers_initializing,
                unhealthy=activity.workers_unhealthy,
                reasons=activity.unhealthy_reasons,
            ),
        )


async def status_body(payloads: JobPayloads, job_id: str) -> bytes | None:
    """A job's status as /status shows it (for its webhook), or None if it is gone."""
    state: JobState | None = await read_models.get(payloads.pool, JOBS, job_id)
    if state is None or expired(state):
        return None
    return msgspec.json.encode(await job_view(payloads, state))
