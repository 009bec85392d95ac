"""The autoscaler: a process manager in the deciders role that keeps each endpoint's workers what
its settings and its queue call for. The rules are pure (services/deciders/autoscaler.py); this
module gathers what they need and carries their decisions out:

- endpoints and their workers: followed from the stream (`ev.endpoint.>`), and updated at once
  from the answers to its own commands, so a decision is never made twice on a stale view;
- the queue and each worker's idleness: from the job dispatcher in this same process, which holds
  them in memory;
- hosts that stopped answering: from the deciders' fleet view.

It evaluates every endpoint on a short timer, and at once when a job enters an empty endpoint's
queue (a cold start does not wait for the next tick). Each decision is a command on the endpoint
(and, to add a worker, the GPU lease on a host in the same atomic append: the placement service),
so every decision is an event with its reason. A decision the endpoint refuses (another replica
was faster, the endpoint was deleted meanwhile) is simply not applied; the next evaluation sees
the new state.

Several deciders replicas may run it: the endpoint aggregate keeps `workersMax` whoever decides,
though two replicas may each add the same missing worker within it; one is the tested
configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from events.ids import new_id
from services.aggregate_follower import AggregateFollower
from services.command_wire import Reply
from services.deciders.autoscaler import (
    AddWorker,
    ScaleDecision,
    ScalerConfig,
    StopWorker,
    WorkerLost,
    scale,
)
from services.deciders.endpoint import (
    ENDPOINT,
    EndpointState,
    ReportWorker,
)
from services.deciders.endpoint import StopWorker as StopWorkerCommand
from services.errors import GpuWorkerError
from services.processes.fleet_view import FleetView
from services.processes.job_dispatcher import JobDispatcher
from services.processes.placement_service import PlacementService, PlaceWorkerOn
from services.processes.runner import DeciderRunner

log = logging.getLogger("gpuworker.autoscaler")

AUTOSCALER = "system:autoscaler"
# A refusal (no capacity, …) of the same kind is logged again at most this often per endpoint.
QUIET_S = 60.0


@dataclass(frozen=True)
class AutoscaleConfig:
    tick_s: float = 0.25
    scaler: ScalerConfig = field(default_factory=ScalerConfig)


class Autoscaler:
    def __init__(
        self,
        nc: NatsClient,
        runner: DeciderRunner,
        placement: PlacementService,
        dispatcher: JobDispatcher,
        fleet: FleetView,
        config: AutoscaleConfig | None = None,
    ) -> None:
        self._nc = nc
        self._runner = runner
        self._placement = placement
        self._dispatcher = dispatcher
        self._fleet = fleet
        self._config = config or AutoscaleConfig()
        self._endpoints = AggregateFollower[EndpointState](ENDPOINT)
        self._busy: set[str] = set()
        self._wake = asyncio.Event()
        self._urgent: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quiet: dict[tuple[str, str], float] = {}
        self.decisions = 0

    async def start(self) -> None:
        await self._endpoints.follow(self._nc)
        self._dispatcher.on_queued = self.nudge
        self._task = asyncio.create_task(self._run(), name="autoscaler")
        log.info("autoscaler ready: %d endpoints", len(self._endpoints.states()))

    async def stop(self) -> None:
        self._dispatcher.on_queued = None
        if self._task is not None:
            self._task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *([self._task] if self._task else []), *self._tasks, return_exceptions=True
        )
        await self._endpoints.stop()

    def nudge(self, endpoint_id: str) -> None:
        """A job entered the endpoint's queue: look at it now if it has no worker of its own."""
        state = self._endpoints.get(endpoint_id)
        if state is None or not state.live_workers:
            self._urgent.add(endpoint_id)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.tick_s)
            self._wake.clear()
            urgent, self._urgent = self._urgent, set()
            try:
                if urgent:
                    for endpoint_id in urgent:
                        self._evaluate_soon(endpoint_id)
                else:
                    for endpoint_id in list(self._endpoints.states()):
                        self._evaluate_soon(endpoint_id)
            except Exception:
                log.exception("autoscaler tick failed")

    def _evaluate_soon(self, endpoint_id: str) -> None:
        if endpoint_id in self._busy:
            return
        state = self._endpoints.get(endpoint_id)
        if state is None or (state.deleted and not state.live_workers):
            return
        self._busy.add(endpoint_id)
        self._spawn(self._evaluate(endpoint_id))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hosts_down(self) -> dict[str, datetime]:
        return {
            h.id: h.lost_since or datetime.now(UTC) for h in self._fleet.hosts() if not h.available
        }

    async def _evaluate(self, endpoint_id: str) -> None:
        try:
            state = self._endpoints.get(endpoint_id)
            if state is None:
                return
            decisions = scale(
                state,
                self._dispatcher.queue_load(endpoint_id),
                self._dispatcher.idle_since(endpoint_id),
                self._hosts_down(),
                datetime.now(UTC),
                self._config.scaler,
            )
            for decision in decisions:
                await self._carry_out(endpoint_id, decision)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("autoscaling endpoint %s failed", endpoint_id)
        finally:
            self._busy.discard(endpoint_id)

    async def _carry_out(self, endpoint_id: str, decision: ScaleDecision) -> None:
        state = self._endpoints.get(endpoint_id)
        if state is None:
            return
        now = datetime.now(UTC)
        match decision:
            case AddWorker():
                command = PlaceWorkerOn(
                    actor=AUTOSCALER,
                    at=now,
                    worker_id=new_id(),
                    active=decision.active,
                    reason=decision.reason,
                )
                try:
                    reply = await self._placement.place_worker(state, command, new_id())
                except GpuWorkerError as exc:
                    reply = Reply(error=exc.body())
            case StopWorker():
                reply = await self._runner.run(
                    "endpoint",
                    endpoint_id,
                    StopWorkerCommand(
                        actor=AUTOSCALER,
                        at=now,
                        worker_id=decision.worker_id,
                        reason=decision.reason,
                    ),
                    f"autoscale:{endpoint_id}",
                )
            case WorkerLost():
                reply = await self._runner.run(
                    "endpoint",
                    endpoint_id,
                    ReportWorker(
                        actor=AUTOSCALER,
                        at=decision.since,
                        worker_id=decision.worker_id,
                        observed="lost",
                        reason=decision.reason,
                    ),
                    f"autoscale:{endpoint_id}",
                )
        if reply.error is not None:
            self._refused(endpoint_id, type(decision).__name__, reply.error.message)
            return
        self.decisions += 1
        fresh = msgspec.json.decode(reply.state, type=EndpointState | None)
        self._endpoints.offer(endpoint_id, fresh, reply.sequence)
        log.info("endpoint %s: %s", endpoint_id, _describe(decision))

    def _refused(self, endpoint_id: str, kind: str, message: str) -> None:
        key = (endpoint_id, kind)
        now = time.monotonic()
        if now - self._quiet.get(key, -QUIET_S) >= QUIET_S:
            self._quiet[key] = now
            log.warning("endpoint %s: %s not done: %s", endpoint_id, kind, message)


def _describe(decision: ScaleDecision) -> str:
    match decision:
        case AddWorker():
            return f"worker added ({decision.reason})"
        case StopWorker():
            return f"worker {decision.worker_id} stopping ({decision.reason})"
        case WorkerLost():
            return f"worker {decision.worker_id} lost ({decision.reason})"
