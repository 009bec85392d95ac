"""The autoscaler's rules, pure: from an endpoint, what its queue and workers look like now and the
time, which workers to add and which to stop, each decision with its reason in words a customer
reads on the endpoint's events. The process manager (services/processes/autoscaler.py) gathers
the inputs and carries the decisions out; the endpoint decider checks them again on its own state
(never above `workersMax`, nothing for a deleted or suspended endpoint).

- `workersMin` workers are kept warm (the first `workersMin` are "active": the lower rate).
- QUEUE_DELAY adds a worker when the oldest waiting job has waited `scalerValue` s and no worker
  of the current version is idle or still starting (one at a time: each new worker gets its
  chance to take the queue before the next is added). REQUEST_COUNT aims at
  ceil((inQueue + inProgress) / scalerValue) workers.
- Scale from zero: a job waits and no worker of the current version exists: one is added at once,
  whatever the scaler (waiting `scalerValue` s for nothing helps no one).
- Never above `workersMax` (counting workers that are stopping: they still hold GPUs), never up
  while no normal-priority job waits (low-priority jobs never scale up).
- A worker idle for `idleTimeout` s stops, down to `workersMin` (flex workers before active ones);
  `workersMin` 0 scales to zero. A busy worker is never stopped for idleness, draining or scale
  down, so no job is lost to the autoscaler.
- Workers of an older endpoint version drain: each stops once it is idle, and is replaced.
- After a failed worker (it never started, or ended on its own soon after its start) no worker is
  added before a backoff that doubles with each failure in a row (BACKOFF_BASE_S up to
  BACKOFF_MAX_S); while unhealthy, one worker is tried at a time. It never spins.
- A worker whose host stopped answering is declared lost (its billing ends when the host was last
  heard) and replaced; one that has not started within `start_timeout_s` is stopped."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from services.deciders.endpoint import (
    ENDPOINT_DELETED,
    UNHEALTHY_AFTER,
    EndpointState,
    WorkerRecord,
)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class ScalerConfig:
    # A worker that has not started this long after it was placed is stopped (image pulls of
    # large images take minutes).
    start_timeout_s: float = 600.0
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S


class QueueLoad(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's jobs right now, as the job dispatcher holds them."""

    # Normal-priority jobs waiting; low-priority ones (never a reason to scale up).
    queued: int = 0
    queued_low: int = 0
    in_progress: int = 0
    # When the longest-waiting normal-priority job entered the queue.
    oldest_queued_at: datetime | None = None


class AddWorker(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    reason: str
    active: bool = False


class StopWorker(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    worker_id: str
    reason: str


class WorkerLost(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Its host stopped answering at `since`: it is gone, billed until then."""

    worker_id: str
    reason: str
    since: datetime


ScaleDecision = AddWorker | StopWorker | WorkerLost


def backoff(failures: int, config: ScalerConfig) -> timedelta:
    """How long after the last of `failures` failed workers in a row the next may be placed."""
    if failures <= 0:
        return timedelta(0)
    seconds = min(config.backoff_base_s * 2 ** min(failures - 1, 30), config.backoff_max_s)
    return timedelta(seconds=seconds)


def _idle_since(worker: WorkerRecord, idle: Mapping[str, datetime | None]) -> datetime | None:
    """When the worker last had nothing to do (None: it runs a job, or has not started)."""
    if worker.status != "RUNNING" or worker.started_at is None:
        return None
    since = idle.get(worker.id, worker.started_at)
    if since is None:
        return None
    return max(since, worker.started_at)


def _busy(worker: WorkerRecord, idle: Mapping[str, datetime | None]) -> bool:
    return worker.status == "RUNNING" and worker.id in idle and idle[worker.id] is None


def scale(
    endpoint: EndpointState,
    queue: QueueLoad,
    idle: Mapping[str, datetime | None],
    hosts_down: Mapping[str, datetime],
    now: datetime,
    config: ScalerConfig | None = None,
) -> list[ScaleDecision]:
    """What to do now. `idle`: for each worker the dispatcher knows, when it became idle (None:
    it holds a job); a running worker it does not know is idle since its start. `hosts_down`:
    hosts that stopped answering, with when they were last heard."""
    config = config or ScalerConfig()
    settings = endpoint.settings
    decisions: list[ScaleDecision] = []
    live: list[WorkerRecord] = []
    for worker in sorted(endpoint.live_workers.values(), key=lambda w: (w.placed_at, w.id)):
        since = hosts_down.get(worker.placement.host_id)
        if since is not None:
            decisions.append(
                WorkerLost(
                    worker_id=worker.id,
                    reason=f"its host {worker.placement.host_id} stopped answering",
                    since=max(since, worker.placed_at),
                )
            )
        else:
            live.append(worker)
    if endpoint.deleted or endpoint.suspended is not None:
        reason = ENDPOINT_DELETED if endpoint.deleted else f"held at zero: {endpoint.suspended}"
        return decisions + [
            StopWorker(worker_id=w.id, reason=reason) for w in live if w.status != "STOPPING"
        ]
    stopping = {w.id for w in live if w.status == "STOPPING"}
    for worker in live:
        if worker.id in stopping:
            continue
        if worker.status == "STARTING" and now - worker.placed_at > timedelta(
            seconds=config.start_timeout_s
        ):
            decisions.append(
                StopWorker(
                    worker_id=worker.id,
                    reason=f"it did not start within {config.start_timeout_s:g} s",
                )
            )
            stopping.add(worker.id)
        elif worker.config_version != endpoint.config_version and not _busy(worker, idle):
            decisions.append(
                StopWorker(
                    worker_id=worker.id,
                    reason=f"replaced by version {endpoint.config_version} of its endpoint",
                )
            )
            stopping.add(worker.id)
    current = [
        w for w in live if w.id not in stopping and w.config_version == endpoint.config_version
    ]
    room = settings.workers_max - len(live)
    wanted, why = _wanted(endpoint, queue, current, idle, now)
    add = max(0, min(wanted - len(current), room))
    if add and endpoint.failures:
        assert endpoint.last_failure_at is not None
        if now < endpoint.last_failure_at + backoff(endpoint.failures, config):
            add = 0
        elif endpoint.failures >= UNHEALTHY_AFTER:
            add = 1  # one at a time while its workers keep failing
    active = sum(1 for w in current if w.active)
    for i in range(add):
        decisions.append(AddWorker(reason=why, active=active + i < settings.workers_min))
    if add == 0 and queue.queued + queue.queued_low == 0:
        decisions += _idle_stops(endpoint, current, idle, now)
    return decisions


def _wanted(
    endpoint: EndpointState,
    queue: QueueLoad,
    current: list[WorkerRecord],
    idle: Mapping[str, datetime | None],
    now: datetime,
) -> tuple[int, str]:
    """How many workers of the current version it should have, and why."""
    settings = endpoint.settings
    floor = settings.workers_min
    wanted, why = floor, f"workersMin is {floor}"
    if queue.queued == 0:
        return wanted, why
    if not current:
        target, reason = 1, "a job waits and no worker runs (scale from zero)"
    elif settings.scaler_type == "REQUEST_COUNT":
        target = math.ceil((queue.queued + queue.in_progress) / settings.scaler_value)
        reason = (
            f"REQUEST_COUNT: {queue.queued} queued and {queue.in_progress} in progress at"
            f" {settings.scaler_value} per worker"
        )
    else:
        waited = (now - queue.oldest_queued_at).total_seconds() if queue.oldest_queued_at else 0.0
        starting = any(w.status == "STARTING" for w in current)
        available = any(_idle_since(w, idle) is not None for w in current)
        if waited >= settings.scaler_value and not starting and not available:
            target = len(current) + 1
            reason = (
                f"QUEUE_DELAY: the oldest job has waited {waited:.1f} s (scalerValue"
                f" {settings.scaler_value} s)"
            )
        else:
            target, reason = len(current), "holding"
    return (target, reason) if target > wanted else (wanted, why)


def _idle_stops(
    endpoint: EndpointState,
    current: list[WorkerRecord],
    idle: Mapping[str, datetime | None],
    now: datetime,
) -> list[ScaleDecision]:
    """Idle workers past `idleTimeout`, down to `workersMin`: flex ones first, then the longest
    idle."""
    settings = endpoint.settings
    timeout = timedelta(seconds=settings.idle_timeout_s)
    candidates = []
    for worker in current:
        since = _idle_since(worker, idle)
        if since is not None and now - since >= timeout:
            candidates.append((worker.active, since, worker.id))
    candidates.sort()
    spare = len(current) - settings.workers_min
    return [
        StopWorker(worker_id=worker_id, reason=f"idle for {settings.idle_timeout_s} s")
        for _active, _since, worker_id in candidates[: max(0, spare)]
    ]
