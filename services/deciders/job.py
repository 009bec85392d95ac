"""Serverless jobs: the state machine that makes a job complete at most once.

    IN_QUEUE --take--> IN_PROGRESS --its worker's result--> COMPLETED | FAILED
       ^  |                 |  --worker lost--> IN_QUEUE (head of the queue; FAILED after 3)
       |  |                 |  --executionTimeout--> TIMED_OUT (the worker is told to drop it)
       |  +--ttl-->  TIMED_OUT
       |  cancel (queued or running) --> CANCELLED (a running worker is told to drop it)
       +---- retry (only from FAILED or TIMED_OUT)

- A take names the next attempt (`attempt` = the last + 1); only one take of an attempt can be
  appended (the event store's per-aggregate concurrency check), so two workers never hold a job.
- A result is accepted only from the worker holding the job's current attempt. The same result
  sent again by that worker (the SDK retries a done call whose answer it lost) is accepted once:
  the second changes nothing. Any other result (another worker's, one that arrives after the job
  was requeued, cancelled or timed out, or a different result for a job already finished) is
  refused, so an accepted result never changes.
- Time comes in the command (`at`), never from a clock here: a timeout is decided only when
  `at` is past the deadline the state holds, so the decider stays pure.

Known limit: a worker is identified by its worker id, not by attempt, since the SDK's done call
names only the job and the worker. If a worker loses a job (stops pinging) and later takes the
same job again, a late result of its first attempt is accepted as the second attempt's."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from events.envelope import Envelope
from events.job import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequeued,
    JobRetried,
    JobSpec,
    JobSubmitted,
    JobTaken,
    JobTimedOut,
    PayloadRef,
)
from services.deciders.decider import Command, Decider, is_system
from services.errors import BadRequest, Conflict, Forbidden, NotFound

JobStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
FINAL: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
RETRYABLE: frozenset[str] = frozenset({"FAILED", "TIMED_OUT"})
# A job whose worker is lost this many times is FAILED instead of being run again: a job that
# kills every worker that takes it must not take the endpoint down with it.
MAX_LOST_ATTEMPTS = 3
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
NOT_FOUND = "job not found"


class JobState(JobSpec, kw_only=True, frozen=True):
    """The job's spec, and what happened to it since."""

    id: str
    owner_id: str
    status: JobStatus
    submitted_at: datetime
    # When it last entered the queue (submitted, requeued or retried).
    queued_at: datetime
    # The last attempt taken (0: never taken).
    attempt: int = 0
    # The worker holding the attempt; after it finishes, the worker that ran it.
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # What its worker sent back (output and/or error), in the payload store.
    result: PayloadRef | None = None
    # The platform's reason for a FAILED, CANCELLED or TIMED_OUT that no worker reported.
    reason: str | None = None
    retries: int = 0
    lost_attempts: int = 0
    # Milliseconds in the queue before its last attempt started, and that attempt's run time.
    delay_ms: int | None = None
    execution_ms: int | None = None
    # Unix time in ms after which its status and result are gone (set once it is final).
    expires_ms: int | None = None
    version: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def execution_deadline(self) -> datetime | None:
        if self.status != "IN_PROGRESS" or self.started_at is None:
            return None
        return self.started_at + timedelta(milliseconds=self.execution_timeout_ms)

    def queue_deadline(self) -> datetime | None:
        if self.status != "IN_QUEUE":
            return None
        return self.queued_at + timedelta(milliseconds=self.ttl_ms)


class SubmitJob(Command, frozen=True, kw_only=True):
    spec: JobSpec


class TakeJob(Command, frozen=True, kw_only=True):
    """The dispatcher hands the job to a waiting worker of its endpoint."""

    endpoint_id: str
    worker_id: str
    attempt: int


class FinishJob(Command, frozen=True, kw_only=True):
    """A worker's done call: its result is in the payload store; `failed` if it holds an error."""

    endpoint_id: str
    worker_id: str
    result: PayloadRef
    failed: bool = False


class RequeueJob(Command, frozen=True, kw_only=True):
    """The dispatcher found the holder of `attempt` gone (silent, or no longer running it)."""

    worker_id: str
    attempt: int
    reason: str


class CancelJob(Command, frozen=True, kw_only=True):
    reason: str = "cancelled by its owner"
    # purge-queue: only a job still in the queue.
    only_queued: bool = False


class TimeOutJob(Command, frozen=True, kw_only=True):
    """Times the job out if `at` is past its executionTimeout (running) or its ttl (queued)."""


class RetryJob(Command, frozen=True, kw_only=True):
    pass


JobCommand = SubmitJob | TakeJob | FinishJob | RequeueJob | CancelJob | TimeOutJob | RetryJob
# Given by the dispatcher only (a worker's result reaches it through the worker protocol).
PLATFORM_COMMANDS = (TakeJob, FinishJob, RequeueJob, TimeOutJob)


def _visible(state: JobState | None, actor: str) -> JobState:
    """The job as its owner (or the platform) sees it; anyone else is told it does not exist."""
    if state is None or not (is_system(actor) or actor == state.owner_id):
        raise NotFound(NOT_FOUND)
    return state


def _submitted(spec: JobSpec) -> list[msgspec.Struct]:
    for field, value in (("executionTimeout", spec.execution_timeout_ms), ("ttl", spec.ttl_ms)):
        if not 1 <= value <= MAX_TIMEOUT_MS:
            raise BadRequest(f"field `policy.{field}`: 1 to {MAX_TIMEOUT_MS} milliseconds")
    if spec.retention_s < 1:
        raise BadRequest("a job's result must be kept at least a second")
    return [JobSubmitted(**msgspec.structs.asdict(spec))]


def _finished(state: JobState, command: FinishJob) -> list[msgspec.Struct]:
    holder = state.worker_id == command.worker_id
    if state.status == "IN_PROGRESS" and holder:
        if command.failed:
            return [
                JobFailed(worker_id=command.worker_id, attempt=state.attempt, result=command.result)
            ]
        return [
            JobCompleted(worker_id=command.worker_id, attempt=state.attempt, result=command.result)
        ]
    same = (
        holder
        and state.result == command.result
        and state.status == ("FAILED" if command.failed else "COMPLETED")
    )
    if same:
        return []  # the same result again: accepted once already
    if state.status in ("COMPLETED", "FAILED") and holder:
        raise Conflict(f"job {state.id} is already {state.status} with another result")
    if state.status in ("IN_PROGRESS", "IN_QUEUE"):
        raise Conflict(
            f"job {state.id} is no longer held by worker {command.worker_id} (its attempt was"
            " given to another worker after this one stopped answering): result refused"
        )
    raise Conflict(f"job {state.id} is {state.status}: result refused")


def decide(state: JobState | None, command: JobCommand) -> list[msgspec.Struct]:
    if isinstance(command, SubmitJob):
        if state is not None:
            raise Conflict("a job with this id already exists")
        return _submitted(command.spec)
    if isinstance(command, PLATFORM_COMMANDS) and not is_system(command.actor):
        raise Forbidden(f"{type(command).__name__} is the dispatcher's, not a user's")
    current = _visible(state, command.actor)
    match command:
        case TakeJob():
            if command.endpoint_id != current.endpoint_id:
                raise NotFound(NOT_FOUND)
            if current.status != "IN_QUEUE":
                raise Conflict(f"job {current.id} is {current.status}, not IN_QUEUE")
            if command.attempt != current.attempt + 1:
                raise Conflict(f"job {current.id}'s next attempt is {current.attempt + 1}")
            return [JobTaken(worker_id=command.worker_id, attempt=command.attempt)]
        case FinishJob():
            if command.endpoint_id != current.endpoint_id:
                raise NotFound(NOT_FOUND)
            return _finished(current, command)
        case RequeueJob():
            held = (
                current.status == "IN_PROGRESS"
                and current.worker_id == command.worker_id
                and current.attempt == command.attempt
            )
            if not held:
                return []  # finished, or requeued already: nothing to take back
            if current.lost_attempts + 1 >= MAX_LOST_ATTEMPTS:
                return [
                    JobFailed(
                        worker_id=command.worker_id,
                        attempt=command.attempt,
                        reason=f"{command.reason}; given up after {MAX_LOST_ATTEMPTS} attempts"
                        " whose workers were lost",
                    )
                ]
            return [
                JobRequeued(
                    worker_id=command.worker_id, attempt=command.attempt, reason=command.reason
                )
            ]
        case CancelJob():
            if current.final or (command.only_queued and current.status != "IN_QUEUE"):
                return []
            running = current.worker_id if current.status == "IN_PROGRESS" else None
            return [JobCancelled(reason=command.reason, worker_id=running)]
        case TimeOutJob():
            if (deadline := current.execution_deadline()) and command.at >= deadline:
                return [
                    JobTimedOut(
                        reason=f"executionTimeout of {current.execution_timeout_ms} ms exceeded",
                        worker_id=current.worker_id,
                    )
                ]
            if (deadline := current.queue_deadline()) and command.at >= deadline:
                return [JobTimedOut(reason=f"ttl of {current.ttl_ms} ms expired in the queue")]
            return []
        case RetryJob():
            if current.status not in RETRYABLE:
                raise Conflict(
                    f"only a FAILED or TIMED_OUT job can be retried; job {current.id} is"
                    f" {current.status}"
                )
            return [JobRetried()]
    raise BadRequest(f"unknown command {type(command).__name__}")


def _ms(later: datetime, earlier: datetime | None) -> int | None:
    return None if earlier is None else max(0, int((later - earlier).total_seconds() * 1000))


def _final(state: JobState, at: datetime, status: JobStatus, **changes: object) -> JobState:
    expires = int(at.timestamp() * 1000) + state.retention_s * 1000
    return msgspec.structs.replace(
        state,
        status=status,
        finished_at=at,
        execution_ms=_ms(at, state.started_at),
        expires_ms=expires,
        version=state.version + 1,
        **changes,
    )


def evolve(state: JobState | None, event: Envelope) -> JobState:
    data = event.data
    at = event.occurred_at
    if isinstance(data, JobSubmitted):
        return JobState(
            id=event.aggregate.id,
            owner_id=event.actor,
            status="IN_QUEUE",
            submitted_at=at,
            queued_at=at,
            version=1,
            **msgspec.structs.asdict(data),
        )
    assert state is not None, f"{event.type} before JobSubmitted"
    replace = msgspec.structs.replace
    match data:
        case JobTaken():
            return replace(
                state,
                status="IN_PROGRESS",
                attempt=data.attempt,
                worker_id=data.worker_id,
                started_at=at,
                delay_ms=_ms(at, state.queued_at),
                execution_ms=None,
                version=state.version + 1,
            )
        case JobCompleted():
            return _final(state, at, "COMPLETED", result=data.result)
        case JobFailed():
            return _final(state, at, "FAILED", result=data.result, reason=data.reason)
        case JobCancelled():
            return _final(state, at, "CANCELLED", reason=data.reason)
        case JobTimedOut():
            return _final(state, at, "TIMED_OUT", reason=data.reason)
        case JobRequeued():
            return replace(
                state,
                status="IN_QUEUE",
                worker_id=None,
                started_at=None,
                queued_at=at,
                lost_attempts=state.lost_attempts + 1,
                version=state.version + 1,
            )
        case JobRetried():
            return replace(
                state,
                status="IN_QUEUE",
                worker_id=None,
                started_at=None,
                finished_at=None,
                result=None,
                reason=None,
                queued_at=at,
                retries=state.retries + 1,
                lost_attempts=0,
                delay_ms=None,
                execution_ms=None,
                expires_ms=None,
                version=state.version + 1,
            )
    raise TypeError(f"job cannot apply {event.type}")


JOB = Decider[JobState](
    aggregate_type="job",
    state_type=JobState,
    command_type=JobCommand,
    decide=decide,
    evolve=evolve,
)
