"""Serverless endpoints: their settings, the container their workers run and its version.

The bounds of every setting are here, named by their API field, so the api and the decider refuse
the same things in the same words (a PATCH is checked against the endpoint it changes: a new
`workersMin` above the stored `workersMax` is refused as well as one above a new `workersMax`).

`config_version` starts at 1 and grows whenever the container changes (another template, or other
env): the dispatcher gives no new job to a worker of an older version, and the autoscaler replaces
such workers. The endpoint also folds the `WorkerStarted`/`WorkerStopped` facts of its workers, so
its cost to date can be read from the ledger by worker id.

Its workers live here (`live_workers`), from `WorkerPlaced` to `WorkerStopped` (or
`WorkerStartFailed`): STARTING until its host reports the container running, RUNNING, STOPPING once
a stop was asked for. The rules the autoscaler's decisions must keep are checked here, on the
endpoint's own state, so no race between deciders can break them: never more live workers than
`workersMax` (a stopping one still holds its GPUs), no worker for a deleted or suspended endpoint.
Deleting or suspending asks every worker to stop in the same decision.

Health: `failures` counts the workers in a row that never started or ended on their own (exited,
crashed, killed, host lost) within HEALTHY_AFTER_S of their start; a worker that ran longer, or was
asked to stop, breaks the run. UNHEALTHY_AFTER such failures make the endpoint unhealthy (its reason
shown on the endpoint and in /health), and the autoscaler backs off exponentially meanwhile."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from events.container import ContainerConfig
from events.endpoint import (
    EndpointCreated,
    EndpointDeleted,
    EndpointResumed,
    EndpointSettings,
    EndpointSuspended,
    EndpointUpdated,
    WorkerPlaced,
    WorkerPlacement,
    WorkerStarted,
    WorkerStartFailed,
    WorkerStopped,
    WorkerStopRequested,
)
from events.envelope import Envelope
from services.deciders.decider import Command, Decider, is_system, reports_for
from services.errors import BadRequest, Conflict, Forbidden, NotFound

MAX_NAME_LENGTH = 128
MAX_GPU_TYPES = 8
MAX_GPU_COUNT = 8
MAX_WORKERS = 100
IDLE_TIMEOUT_RANGE = (1, 3600)
DEFAULT_IDLE_TIMEOUT_S = 5
SCALER_TYPES = ("QUEUE_DELAY", "REQUEST_COUNT")
DEFAULT_SCALER_VALUE = 4
MAX_SCALER_VALUE = 86_400
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
EXECUTION_TIMEOUT_RANGE_MS = (1_000, 7 * 24 * 3600 * 1000)
NOT_FOUND = "endpoint not found"
# A worker that ran at least this long before it ended worked: the run of failures is broken.
HEALTHY_AFTER_S = 60
# This many failed workers in a row make the endpoint unhealthy.
UNHEALTHY_AFTER = 3
ENDPOINT_DELETED = "its endpoint was deleted"

ScalerType = Literal["QUEUE_DELAY", "REQUEST_COUNT"]
WorkerStatus = Literal["STARTING", "RUNNING", "STOPPING"]


class WorkerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One live worker of the endpoint: placed, and not stopped yet."""

    id: str
    placement: WorkerPlacement
    config_version: int
    active: bool = False
    status: WorkerStatus
    placed_at: datetime
    # When its container started (the host's clock): billed from then.
    started_at: datetime | None = None
    stop_reason: str | None = None


class EndpointState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    owner_id: str
    name: str
    template_id: str
    env: dict[str, str]
    container: ContainerConfig
    settings: EndpointSettings
    config_version: int = 1
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    # Workers started on hosts and not stopped yet (WorkerStarted/WorkerStopped), by id.
    workers: list[str] = []
    # Every worker ever started for it: the ledger's resources its cost to date adds up.
    billed_workers: list[str] = []
    # Workers placed and not stopped yet, by id.
    live_workers: dict[str, WorkerRecord] = {}
    # Workers in a row that failed (see the module's docstring), the last one's time and reason.
    failures: int = 0
    last_failure_at: datetime | None = None
    last_failure: str | None = None
    # Why billing holds it at zero workers (None: it is not held).
    suspended: str | None = None
    version: int = 0

    @property
    def unhealthy(self) -> str | None:
        """Why its workers are unhealthy, if they are: they keep failing."""
        if self.failures < UNHEALTHY_AFTER:
            return None
        return f"{self.failures} workers in a row failed; the last: {self.last_failure}"


class CreateEndpoint(Command, frozen=True, kw_only=True):
    name: str
    template_id: str
    env: dict[str, str]
    container: ContainerConfig
    settings: EndpointSettings


class UpdateEndpoint(Command, frozen=True, kw_only=True):
    """None: unchanged. `container` is the api's resolution of the (new) template with the (new)
    env: a container that differs from the stored one makes a new version."""

    name: str | None = None
    template_id: str | None = None
    env: dict[str, str] | None = None
    container: ContainerConfig | None = None
    settings: EndpointSettings | None = None


class DeleteEndpoint(Command, frozen=True, kw_only=True):
    pass


class PlaceWorker(Command, frozen=True, kw_only=True):
    """The autoscaler's: a worker on GPUs leased on its host in the same decision."""

    worker_id: str
    placement: WorkerPlacement
    active: bool = False
    reason: str


class StopWorker(Command, frozen=True, kw_only=True):
    """The autoscaler's: the worker's host is to stop it."""

    worker_id: str
    reason: str


WorkerObservation = Literal["running", "exited", "failed", "lost"]


class ReportWorker(Command, frozen=True, kw_only=True):
    """From the worker's host (actor `system:agent:<host>`), `at` when it happened there: its
    container runs ("running"), ended ("exited"), or could not be made or started ("failed"). The
    autoscaler reports "lost" for a worker whose host stopped answering, `at` when it was last
    heard."""

    worker_id: str
    observed: WorkerObservation
    exit_code: int | None = None
    reason: str | None = None
    # The lease of the worker the host saw this happen to (a worker id is never reused, so this
    # is a check that the report is about this endpoint's worker, not news about another one).
    lease_id: str | None = None


class SuspendEndpoint(Command, frozen=True, kw_only=True):
    """The ledger's: its owner can no longer pay; scale to zero and stay there."""

    reason: str


class ResumeEndpoint(Command, frozen=True, kw_only=True):
    """The ledger's: its owner can pay again."""


EndpointCommand = (
    CreateEndpoint
    | UpdateEndpoint
    | DeleteEndpoint
    | PlaceWorker
    | StopWorker
    | ReportWorker
    | SuspendEndpoint
    | ResumeEndpoint
)
# Given by the platform only (the autoscaler, the ledger, a host's agent), never by a user.
PLATFORM_COMMANDS = (PlaceWorker, StopWorker, ReportWorker, SuspendEndpoint, ResumeEndpoint)


def settings_problem(settings: EndpointSettings) -> str | None:
    """What is wrong with `settings`, naming the API field; None when they are valid."""
    low, high = IDLE_TIMEOUT_RANGE
    shortest, longest = EXECUTION_TIMEOUT_RANGE_MS
    ids = settings.gpu_ids
    if not ids or len(ids) > MAX_GPU_TYPES:
        return f"field `gpuIds`: 1 to {MAX_GPU_TYPES} GPU types"
    if len(set(ids)) != len(ids):
        return "field `gpuIds`: a GPU type is listed twice"
    checks = (
        (1 <= settings.gpu_count <= MAX_GPU_COUNT, f"field `gpuCount`: 1 to {MAX_GPU_COUNT}"),
        (0 <= settings.workers_min <= MAX_WORKERS, f"field `workersMin`: 0 to {MAX_WORKERS}"),
        (0 <= settings.workers_max <= MAX_WORKERS, f"field `workersMax`: 0 to {MAX_WORKERS}"),
        (
            settings.workers_min <= settings.workers_max,
            f"field `workersMin`: {settings.workers_min} is above workersMax"
            f" ({settings.workers_max})",
        ),
        (low <= settings.idle_timeout_s <= high, f"field `idleTimeout`: {low} to {high} seconds"),
        (
            settings.scaler_type in SCALER_TYPES,
            f"field `scalerType`: one of {', '.join(SCALER_TYPES)}",
        ),
        (
            1 <= settings.scaler_value <= MAX_SCALER_VALUE,
            f"field `scalerValue`: 1 to {MAX_SCALER_VALUE}",
        ),
        (
            shortest <= settings.execution_timeout_ms <= longest,
            f"field `executionTimeoutMs`: {shortest} to {longest} milliseconds",
        ),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    return None


def _check(name: str | None, settings: EndpointSettings | None) -> None:
    if name is not None and (not name.strip() or len(name) > MAX_NAME_LENGTH):
        raise BadRequest(f"field `name`: 1 to {MAX_NAME_LENGTH} characters, not blank")
    if settings is not None and (problem := settings_problem(settings)) is not None:
        raise BadRequest(problem)


def _owned(state: EndpointState | None, actor: str) -> EndpointState:
    if state is None or state.deleted or state.owner_id != actor:
        raise NotFound(NOT_FOUND)
    return state


def _stop_all(state: EndpointState, reason: str) -> list[msgspec.Struct]:
    return [
        WorkerStopRequested(worker_id=w.id, reason=reason)
        for w in state.live_workers.values()
        if w.status != "STOPPING"
    ]


def _report(state: EndpointState, command: ReportWorker) -> list[msgspec.Struct]:
    record = state.live_workers.get(command.worker_id)
    if record is None:
        return []  # late news about a worker that ended already
    if command.observed == "lost":
        if not is_system(command.actor) or command.actor.startswith("system:agent:"):
            raise Forbidden("only the platform declares a worker's host lost")
    elif not reports_for(command.actor, record.placement.host_id):
        # Another host's agent knows nothing about this worker: it does not exist for it.
        raise NotFound("worker not found")
    if command.lease_id is not None and command.lease_id != record.placement.lease_id:
        return []
    lease, host = record.placement.lease_id, record.placement.host_id
    if command.observed == "running":
        if record.started_at is not None:
            return []
        return [
            WorkerStarted(
                worker_id=record.id,
                owner_id=state.owner_id,
                host_id=record.placement.host_id,
                gpu_type_id=record.placement.gpu_type_id,
                gpu_count=record.placement.gpu_count,
                active=record.active,
            )
        ]
    reason = command.reason or (
        f"its container exited with code {command.exit_code}"
        if command.exit_code is not None
        else "its container ended"
    )
    if record.started_at is None:
        return [WorkerStartFailed(worker_id=record.id, reason=reason, host_id=host, lease_id=lease)]
    return [
        WorkerStopped(
            worker_id=record.id,
            reason=record.stop_reason
            if record.status == "STOPPING" and record.stop_reason
            else reason,
            host_id=host,
            lease_id=lease,
            exit_code=command.exit_code,
            unexpected=record.status != "STOPPING",
        )
    ]


def _platform(state: EndpointState | None, command: EndpointCommand) -> list[msgspec.Struct]:
    if not is_system(command.actor):
        raise Forbidden(f"{type(command).__name__} is the platform's, not a user's")
    if state is None:
        raise NotFound(NOT_FOUND)
    match command:
        case PlaceWorker():
            if command.worker_id in state.live_workers:
                return []
            if state.deleted:
                raise Conflict(f"endpoint {state.id} is deleted: no new workers")
            if state.suspended is not None:
                raise Conflict(f"endpoint {state.id} is held at zero workers: {state.suspended}")
            live = len(state.live_workers)
            if live >= state.settings.workers_max:
                raise Conflict(
                    f"endpoint {state.id} has {live} workers already (workersMax"
                    f" {state.settings.workers_max})"
                )
            return [
                WorkerPlaced(
                    worker_id=command.worker_id,
                    placement=command.placement,
                    config_version=state.config_version,
                    active=command.active,
                    reason=command.reason,
                )
            ]
        case StopWorker():
            record = state.live_workers.get(command.worker_id)
            if record is None or record.status == "STOPPING":
                return []
            return [WorkerStopRequested(worker_id=record.id, reason=command.reason)]
        case ReportWorker():
            return _report(state, command)
        case SuspendEndpoint():
            if state.suspended == command.reason:
                return []
            return [EndpointSuspended(reason=command.reason), *_stop_all(state, command.reason)]
        case ResumeEndpoint():
            return [] if state.suspended is None else [EndpointResumed()]
    raise BadRequest(f"unknown command {type(command).__name__}")


def decide(state: EndpointState | None, command: EndpointCommand) -> list[msgspec.Struct]:
    if isinstance(command, PLATFORM_COMMANDS):
        return _platform(state, command)
    match command:
        case CreateEndpoint():
            if state is not None:
                raise Conflict("an endpoint with this id already exists")
            _check(command.name, command.settings)
            return [
                EndpointCreated(
                    name=command.name.strip(),
                    template_id=command.template_id,
                    env=command.env,
                    container=command.container,
                    settings=command.settings,
                )
            ]
        case UpdateEndpoint():
            current = _owned(state, command.actor)
            _check(command.name, command.settings)
            changes: dict[str, Any] = {
                field: value
                for field in ("name", "template_id", "env", "container", "settings")
                if (value := getattr(command, field)) is not None
                and value != getattr(current, field)
            }
            if "name" in changes:
                changes["name"] = changes["name"].strip()
            return [EndpointUpdated(**changes)] if changes else []
        case DeleteEndpoint():
            current = _owned(state, command.actor)
            return [EndpointDeleted(), *_stop_all(current, ENDPOINT_DELETED)]
    raise BadRequest(f"unknown command {type(command).__name__}")


def _ended(
    state: EndpointState, record: WorkerRecord | None, at: datetime, reason: str, failed: bool
) -> dict[str, Any]:
    """What changes when a worker ends: it leaves the live workers, and its end counts in the
    endpoint's run of failures (a failure, or one that breaks the run)."""
    live = {k: v for k, v in state.live_workers.items() if k != (record.id if record else None)}
    changes: dict[str, Any] = {"live_workers": live}
    if record is None:
        return changes
    if failed:
        short = record.started_at is None or at - record.started_at < timedelta(
            seconds=HEALTHY_AFTER_S
        )
        changes.update(
            failures=state.failures + 1 if short else 1,
            last_failure_at=at,
            last_failure=reason,
        )
    elif record.started_at is not None:
        changes.update(failures=0)
    return changes


def evolve(state: EndpointState | None, event: Envelope) -> EndpointState:
    data = event.data
    if isinstance(data, EndpointCreated):
        return EndpointState(
            id=event.aggregate.id,
            owner_id=event.actor,
            name=data.name,
            template_id=data.template_id,
            env=data.env,
            container=data.container,
            settings=data.settings,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            version=1,
        )
    assert state is not None, f"{event.type} before EndpointCreated"
    replace = msgspec.structs.replace
    bumped = state.version + 1
    if isinstance(data, EndpointUpdated):
        changes = {
            field: value
            for field in ("name", "template_id", "env", "container", "settings")
            if (value := getattr(data, field)) is not None
        }
        new_version = state.config_version + (1 if data.container is not None else 0)
        return replace(
            state,
            **changes,
            config_version=new_version,
            updated_at=event.occurred_at,
            version=bumped,
        )
    if isinstance(data, EndpointDeleted):
        return replace(state, deleted=True, updated_at=event.occurred_at, version=bumped)
    at = event.occurred_at
    match data:
        case WorkerPlaced():
            record = WorkerRecord(
                id=data.worker_id,
                placement=data.placement,
                config_version=data.config_version,
                active=data.active,
                status="STARTING",
                placed_at=at,
            )
            return replace(
                state, live_workers={**state.live_workers, record.id: record}, version=bumped
            )
        case WorkerStarted():
            workers = [w for w in state.workers if w != data.worker_id] + [data.worker_id]
            billed = state.billed_workers
            if data.worker_id not in billed:
                billed = [*billed, data.worker_id]
            live = state.live_workers
            if (started := live.get(data.worker_id)) is not None:
                status = "RUNNING" if started.status == "STARTING" else started.status
                live = {**live, started.id: replace(started, status=status, started_at=at)}
            return replace(
                state, workers=workers, billed_workers=billed, live_workers=live, version=bumped
            )
        case WorkerStopRequested():
            live = state.live_workers
            if (asked := live.get(data.worker_id)) is not None:
                stopping = replace(asked, status="STOPPING", stop_reason=data.reason)
                live = {**live, asked.id: stopping}
            return replace(state, live_workers=live, version=bumped)
        case WorkerStopped():
            workers = [w for w in state.workers if w != data.worker_id]
            ended = state.live_workers.get(data.worker_id)
            changes = _ended(state, ended, at, data.reason, data.unexpected)
            return replace(state, workers=workers, version=bumped, **changes)
        case WorkerStartFailed():
            never = state.live_workers.get(data.worker_id)
            wanted_gone = never is not None and never.status == "STOPPING"
            changes = _ended(state, never, at, data.reason, not wanted_gone)
            return replace(state, version=bumped, **changes)
        case EndpointSuspended():
            return replace(state, suspended=data.reason, updated_at=at, version=bumped)
        case EndpointResumed():
            return replace(state, suspended=None, updated_at=at, version=bumped)
    raise TypeError(f"endpoint cannot apply {event.type}")


ENDPOINT = Decider[EndpointState](
    aggregate_type="endpoint",
    state_type=EndpointState,
    command_type=EndpointCommand,
    decide=decide,
    evolve=evolve,
)
