"""The worker protocol: RunPod's, as the runpod SDK (1.12) speaks it, under /worker/v1/:endpoint/.
The URLs a worker is given are built by services/worker_env.py; the SDK's side of each route is
named below.

- GET  job-take/:worker (rp_job.get_job): a long poll; 204 when no job came within
  GPUWORKER_JOB_POLL_MAX s, else `{"id", "input"}`. job-take-batch/:worker?batch_size=N answers
  a list. `job_in_progress` (appended by the SDK) is accepted and needs nothing.
- POST job-done/:worker/:job (rp_http.send_result): the body is JSON although the SDK labels it
  form-encoded; `{"output"}` and/or `{"error"}`. The SDK retries a done call that failed: the same
  result again is accepted once (200 both times); a result from a worker that no longer holds the
  job is a 409 and changes nothing.
- POST job-stream/:worker/:job (rp_http.stream_result): a generator handler's partial output.
- GET  ping/:worker (rp_ping.Heartbeat): liveness of the worker and of the jobs it lists in
  `job_id`; `status=unhealthy&check&reason` from a failed fitness check.
- GET  job-stop/:worker (rp_job.get_stop_signals): a long poll; `{"jobsToStop": [ids]}` names
  jobs the worker must drop (cancelled, timed out, or given to another worker), or 204.

Authentication: the worker's token, sent raw in `Authorization` (RUNPOD_AI_API_KEY; `Bearer
<token>` works too), good for the endpoint and worker the path names only. These routes are apart
from the user API: no user token works here and a worker token works nowhere else.

A take answers as soon as the job's take is stored (it does not wait for the jobs read model:
this is the hot path); a done answers once the read model shows the result, like every write. A
done for a job this process offered that worker stores its result at once (services/api/
job_offers.py); any other asks the dispatcher first whether the worker holds the job, so that
what would be refused is never stored.
Nothing here holds a database connection while it waits: the long polls wait on a NATS request to
the job dispatcher (services/processes/job_dispatcher.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
import nats.errors
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from services.api import job_payloads, read_models
from services.api.body_limit import RESULT_BODY_BYTES
from services.api.context import ApiContext, context_of
from services.api.endpoint_activity import record_ping
from services.api.jobs import JOBS, WorkerResult
from services.command_wire import Reply
from services.deciders.job import JobState
from services.errors import (
    BadRequest,
    Conflict,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    from_body,
)
from services.worker_env import WORKER_ROUTES
from services.worker_wire import (
    DONE,
    HOLD,
    MAX_BATCH,
    PING,
    STOP,
    TAKE,
    DoneRequest,
    HoldRequest,
    Offer,
    Ping,
    StopReply,
    StopRequest,
    TakeReply,
    TakeRequest,
    worker_subject,
)

# How much longer than a long poll the api waits for the dispatcher's answer.
REPLY_MARGIN_S = 5.0
# How long a long poll waits before it answers "nothing" while the dispatcher is unreachable.
DISPATCHER_DOWN_PAUSE_S = 1.0
MAX_REASON = 256


class TakenJob(msgspec.Struct, frozen=True):
    id: str
    input: msgspec.Raw


class JobsToStop(msgspec.Struct, rename="camel", frozen=True):
    jobs_to_stop: list[str]


class Partial(msgspec.Struct):
    output: msgspec.Raw


class Accepted(msgspec.Struct, frozen=True):
    id: str
    status: str


class PingQuery(msgspec.Struct, frozen=True):
    """A ping's query: `job_id` lists the running jobs (comma-separated); `status=unhealthy`
    with `check` and `reason` reports a failed fitness check."""

    v: int | None = None
    job_id: str | None = None
    status: str | None = None
    check: str | None = None
    reason: str | None = None


_encode = msgspec.json.Encoder().encode
PING_OK = _encode({"status": "ok"})


@dataclass(frozen=True)
class WorkerCall:
    """A worker's request, authenticated: made only by `authenticated`."""

    ctx: ApiContext
    endpoint_id: str
    worker_id: str


def authenticated(
    ctx: ApiContext, authorization: str, endpoint_id: str, worker_id: str
) -> WorkerCall:
    token = authorization.strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer":
        token = rest.strip()
    ids_ok = read_models.valid_id(endpoint_id) and read_models.valid_id(worker_id)
    if not (token and ids_ok and ctx.worker_tokens.valid(token, endpoint_id, worker_id)):
        raise Unauthorized(
            "worker token is not valid for this endpoint and worker: send the RUNPOD_AI_API_KEY"
            " the worker was started with in `Authorization`"
        )
    return WorkerCall(ctx, endpoint_id, worker_id)


async def take(call: WorkerCall, batch: int, v: int | None) -> list[tuple[str, bytes]]:
    """Up to `batch` jobs as (id, input), after a long poll; [] when none came."""
    ctx, worker_id = call.ctx, call.worker_id
    wait_s = ctx.settings.job_poll_max_s
    request = TakeRequest(worker_id=worker_id, batch=batch, version=v, wait_ms=int(wait_s * 1000))
    data = await _long_poll(ctx, worker_subject(call.endpoint_id, TAKE), request, wait_s)
    if data is None:
        return []
    reply = msgspec.json.decode(data, type=TakeReply)
    if reply.error is not None:
        raise from_body(reply.error)
    for offer in reply.jobs:
        ctx.offers.offered(offer.id, worker_id)
    return await _inputs(ctx, reply.jobs)


def taken_body(jobs: list[tuple[str, bytes]], batch: bool) -> bytes:
    taken = [TakenJob(job_id, msgspec.Raw(body)) for job_id, body in jobs]
    return _encode(taken if batch else taken[0])


async def done(call: WorkerCall, job_id: str, body: bytes) -> bytes:
    """A job's result stored and judged; the answer's body."""
    ctx, endpoint_id, worker_id = call.ctx, call.endpoint_id, call.worker_id
    result = _decoded(body, WorkerResult, "the result is not a JSON object")
    if ctx.offers.holds(job_id, worker_id):
        # This process gave the job to this worker: store first, the dispatcher judges.
        reference = await ctx.payloads.put(job_id, body)
    else:
        held = await _held(ctx, endpoint_id, job_id)
        reference = job_payloads.ref_of(body)
        repeat = held.result == reference and held.status in ("COMPLETED", "FAILED")
        if held.worker_id != worker_id or not (held.status == "IN_PROGRESS" or repeat):
            # What the job would refuse is never stored (a worker runs customer code).
            raise Conflict(_refusal(held, worker_id))
        if not repeat:
            await ctx.payloads.put(job_id, body)
    request = DoneRequest(
        worker_id=worker_id, job_id=job_id, result=reference, failed=result.failed
    )
    reply = await _ask(ctx, endpoint_id, DONE, request)
    ctx.offers.forget(job_id)
    # Like every write: a status read after this answer shows the result.
    visible = await ctx.watcher.wait(
        JOBS.name, reply.sequence, ctx.settings.read_your_writes_timeout_s
    )
    state = msgspec.json.decode(reply.state, type=JobState)
    if visible and state.final:
        ctx.job_waits.settle(state)
    return _encode(Accepted(state.id, state.status))


async def stream(call: WorkerCall, job_id: str, body: bytes) -> bytes:
    """A partial output kept; the answer's body."""
    ctx, worker_id = call.ctx, call.worker_id
    held = await _held(ctx, call.endpoint_id, job_id)
    partial = _decoded(body, Partial, 'the partial output is not `{"output": …}`')
    if held.status != "IN_PROGRESS" or held.worker_id != worker_id:
        raise Conflict(_refusal(held, worker_id))
    if not await ctx.payloads.add_partial(job_id, bytes(partial.output)):
        limit = job_payloads.MAX_STREAM_BYTES // (1024 * 1024)
        raise PayloadTooLarge(f"job {job_id}'s partial outputs pass {limit} MiB: refused")
    return _encode(Accepted(job_id, "IN_PROGRESS"))


async def ping(call: WorkerCall, query: PingQuery) -> bytes:
    ctx, endpoint_id, worker_id = call.ctx, call.endpoint_id, call.worker_id
    running = [j for j in (query.job_id or "").split(",") if read_models.valid_id(j)][:1000]
    unhealthy = None
    if query.status == "unhealthy":
        check, reason = query.check or "fitness check", query.reason or "no reason given"
        # Customer code wrote it: PostgreSQL stores no NUL byte (it would answer 500).
        unhealthy = f"{check} failed: {reason}".replace("\x00", "")[:MAX_REASON]
    await record_ping(ctx.pool, endpoint_id, worker_id, query.v, running, unhealthy)
    message = Ping(worker_id=worker_id, job_ids=running, version=query.v, unhealthy=unhealthy)
    await ctx.nc.publish(worker_subject(endpoint_id, PING), msgspec.json.encode(message))
    return PING_OK


async def stop(call: WorkerCall) -> list[str]:
    """The jobs the worker must drop, after a long poll; [] when none."""
    ctx = call.ctx
    wait_s = ctx.settings.job_poll_max_s
    request = StopRequest(worker_id=call.worker_id, wait_ms=int(wait_s * 1000))
    data = await _long_poll(ctx, worker_subject(call.endpoint_id, STOP), request, wait_s)
    reply = msgspec.json.decode(data, type=StopReply) if data else StopReply([])
    return reply.job_ids


def stop_body(job_ids: list[str]) -> bytes:
    return _encode(JobsToStop(job_ids))


def _json(body: bytes) -> Response[bytes]:
    return Response(body, media_type=MediaType.JSON)


def _no_content() -> Response[bytes]:
    return Response(b"", status_code=204)


def _call(request: Request[Any, Any, Any], endpoint_id: str, worker_id: str) -> WorkerCall:
    authorization = request.headers.get("authorization", "")
    return authenticated(context_of(request), authorization, endpoint_id, worker_id)


class WorkerProtocolController(Controller):
    """What OpenAPI documents, and what serves these routes in an app without the front that
    normally serves them first (services/api/worker_front.py); both call the functions above."""

    path = WORKER_ROUTES + "/{endpoint_id:str}"
    tags = ["worker protocol"]

    @get("/job-take/{worker_id:str}", summary="Take a job (long poll; 204: none came)")
    async def job_take(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
        v: FromQuery[int | None] = None,
    ) -> Response[bytes]:
        jobs = await take(_call(request, endpoint_id, worker_id), 1, v)
        return _json(taken_body(jobs, batch=False)) if jobs else _no_content()

    @get("/job-take-batch/{worker_id:str}", summary="Take up to batch_size jobs (long poll)")
    async def job_take_batch(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
        v: FromQuery[int | None] = None,
        batch_size: Annotated[int, QueryParameter(ge=1, le=MAX_BATCH)] = 1,
    ) -> Response[bytes]:
        jobs = await take(_call(request, endpoint_id, worker_id), batch_size, v)
        return _json(taken_body(jobs, batch=True)) if jobs else _no_content()

    @post(
        "/job-done/{worker_id:str}/{job_id:str}",
        status_code=200,
        summary="A job's result (JSON, whatever its content type says)",
        request_max_body_size=RESULT_BODY_BYTES,
    )
    async def job_done(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
        job_id: FromPath[str],
    ) -> Response[bytes]:
        call = _call(request, endpoint_id, worker_id)
        job_id = read_models.checked_id(job_id, "job")
        return _json(await done(call, job_id, await request.body()))

    @post(
        "/job-stream/{worker_id:str}/{job_id:str}",
        status_code=200,
        summary="A partial output of a job that streams",
        request_max_body_size=RESULT_BODY_BYTES,
    )
    async def job_stream(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
        job_id: FromPath[str],
    ) -> Response[bytes]:
        call = _call(request, endpoint_id, worker_id)
        job_id = read_models.checked_id(job_id, "job")
        return _json(await stream(call, job_id, await request.body()))

    @get("/ping/{worker_id:str}", summary="The worker is alive, and runs the jobs in `job_id`")
    async def ping(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
        v: FromQuery[int | None] = None,
        job_id: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        check: FromQuery[str | None] = None,
        reason: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        query = PingQuery(v=v, job_id=job_id, status=status, check=check, reason=reason)
        return _json(await ping(_call(request, endpoint_id, worker_id), query))

    @get("/job-stop/{worker_id:str}", summary="Jobs the worker must drop (long poll; 204: none)")
    async def job_stop(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[str],
        worker_id: FromPath[str],
    ) -> Response[bytes]:
        job_ids = await stop(_call(request, endpoint_id, worker_id))
        return _json(stop_body(job_ids)) if job_ids else _no_content()


async def _request(ctx: ApiContext, subject: str, payload: bytes, timeout: float) -> bytes:
    try:
        msg = await ctx.nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise ServiceUnavailable("the job dispatcher is not running; retry shortly") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise ServiceUnavailable("the job dispatcher did not answer; retry shortly") from None
    data: bytes = msg.data
    return data


async def _long_poll(ctx: ApiContext, subject: str, message: Any, wait_s: float) -> bytes | None:
    """The dispatcher's answer to a long poll; None (after a pause) while it cannot answer, e.g.
    while the deciders restart: the SDK asks again at once after any error, so an error here
    would make every worker spin; "nothing for you yet" is the truth for the worker anyway."""
    try:
        return await _request(ctx, subject, msgspec.json.encode(message), wait_s + REPLY_MARGIN_S)
    except ServiceUnavailable:
        await asyncio.sleep(min(wait_s, DISPATCHER_DOWN_PAUSE_S))
        return None


async def _held(ctx: ApiContext, endpoint_id: str, job_id: str) -> JobState:
    """The job as the dispatcher has it now."""
    reply = await _ask(ctx, endpoint_id, HOLD, HoldRequest(job_id=job_id))
    return msgspec.json.decode(reply.state, type=JobState)


async def _ask(ctx: ApiContext, endpoint_id: str, operation: str, message: Any) -> Reply:
    """A request to the dispatcher answered with a Reply; its error raised in the seed's shape."""
    data = await _request(
        ctx,
        worker_subject(endpoint_id, operation),
        msgspec.json.encode(message),
        ctx.settings.request_timeout_s,
    )
    reply = msgspec.json.decode(data, type=Reply)
    if reply.error is not None:
        raise from_body(reply.error)
    return reply


T = TypeVar("T")


def _decoded(body: bytes, into: type[T], problem: str) -> T:
    try:
        return msgspec.json.decode(body, type=into)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"{problem}: {exc}") from None


def _refusal(held: JobState, worker_id: str) -> str:
    if held.worker_id == worker_id and held.status in ("COMPLETED", "FAILED"):
        return f"job {held.id} is already {held.status} with another result: result refused"
    if held.status in ("IN_PROGRESS", "IN_QUEUE"):
        return (
            f"job {held.id} is not held by worker {worker_id} (it was given to another worker"
            " after this one stopped answering): refused"
        )
    return f"job {held.id} is {held.status}: refused"


async def _inputs(ctx: ApiContext, offers: list[Offer]) -> list[tuple[str, bytes]]:
    """Each offered job with its input, from the payload store."""
    bodies = await ctx.payloads.get_many([(o.id, o.input) for o in offers])
    return [(o.id, bodies.get((o.id, o.input.sha256), b"null")) for o in offers]
