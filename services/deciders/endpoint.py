"""Serverless endpoints: their settings, the container their workers run and its version.

The bounds of every setting are here, named by their API field, so the api and the decider refuse
the same things in the same words (a PATCH is checked against the endpoint it changes: a new
`workersMin` above the stored `workersMax` is refused as well as one above a new `workersMax`).

`config_version` starts at 1 and grows whenever the container changes (another template, or other
env): the dispatcher gives no new job to a worker of an older version, and the autoscaler replaces
such workers. The endpoint also folds the `WorkerStarted`/`WorkerStopped` facts of its workers, so
its cost to date can be read from the ledger by worker id."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from events.container import ContainerConfig
from events.endpoint import (
    EndpointCreated,
    EndpointDeleted,
    EndpointSettings,
    EndpointUpdated,
    WorkerStarted,
    WorkerStopped,
)
from events.envelope import Envelope
from services.deciders.decider import Command, Decider
from services.errors import BadRequest, Conflict, NotFound

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

ScalerType = Literal["QUEUE_DELAY", "REQUEST_COUNT"]


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
    version: int = 0


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


EndpointCommand = CreateEndpoint | UpdateEndpoint | DeleteEndpoint


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


def decide(state: EndpointState | None, command: EndpointCommand) -> list[msgspec.Struct]:
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
            _owned(state, command.actor)
            return [EndpointDeleted()]
    raise BadRequest(f"unknown command {type(command).__name__}")


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
    if isinstance(data, WorkerStarted):
        workers = [w for w in state.workers if w != data.worker_id] + [data.worker_id]
        billed = state.billed_workers
        if data.worker_id not in billed:
            billed = [*billed, data.worker_id]
        return replace(state, workers=workers, billed_workers=billed, version=bumped)
    if isinstance(data, WorkerStopped):
        workers = [w for w in state.workers if w != data.worker_id]
        return replace(state, workers=workers, version=bumped)
    raise TypeError(f"endpoint cannot apply {event.type}")


ENDPOINT = Decider[EndpointState](
    aggregate_type="endpoint",
    state_type=EndpointState,
    command_type=EndpointCommand,
    decide=decide,
    evolve=evolve,
)
