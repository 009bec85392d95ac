"""Property test of the autoscaler's rules (services/deciders/autoscaler.py `scale`) against the
endpoint decider that checks them: whatever jobs arrive (normal and low priority), whatever the
clocks do, whichever workers fail to start, crash, or lose their host, and whatever version changes
the owner makes, with arbitrary settings.

Hypothesis drives a small world: a queue the workers take jobs from (a crashed or lost worker's job
goes back to the queue, as the dispatcher requeues it), hosts whose agents report containers
running, failing to start, exiting or stopping, and the autoscaler's decisions applied as its
process manager applies them (commands on the ENDPOINT decider, refusals ignored). After every step:

- live workers never exceed `workersMax`;
- a worker is added only when fewer than `workersMin` workers of the current version live, or a
  normal-priority job waits (never up on an empty queue; low-priority jobs never scale up);
- no worker holding a job is ever asked to stop (no job is lost to the autoscaler), and every job
  is queued, held by a live worker, or done;

and once arrivals end and the world settles (containers start, jobs finish, clocks pass backoff and
idleTimeout): every normal-priority job is done (low-priority ones too, unless no worker is warm
to take them), and exactly `workersMin` workers remain (zero when it is 0).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from events.container import ContainerConfig
from events.endpoint import EndpointSettings, WorkerPlacement
from events.envelope import AggregateRef, Envelope
from services.deciders.autoscaler import (
    AddWorker,
    QueueLoad,
    ScalerConfig,
    StopWorker,
    WorkerLost,
    scale,
)
from services.deciders.decider import agent_actor
from services.deciders.endpoint import (
    ENDPOINT,
    CreateEndpoint,
    EndpointState,
    PlaceWorker,
    ReportWorker,
    UpdateEndpoint,
)
from services.deciders.endpoint import StopWorker as StopWorkerCommand
from services.errors import GpuWorkerError

OWNER = "0190f1e2-0000-7000-8000-00000000000a"
AUTOSCALER = "system:autoscaler"
ENDPOINT_ID = "ep-1"
HOSTS = ("h1", "h2")
BASE = datetime(2026, 1, 1, tzinfo=UTC)
# Short backoff so a settle of a few hundred simulated seconds passes any of it.
CONFIG = ScalerConfig(start_timeout_s=120.0, backoff_base_s=1.0, backoff_max_s=16.0)

steps_ms = st.sampled_from((0, 1, 250, 999, 1_000, 2_500, 5_000, 30_000, 200_000))


class Job(msgspec.Struct):
    id: str
    queued_at: datetime
    low: bool


class AutoscalerWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = BASE
        self.state: EndpointState | None = None
        self.sequence = 0
        self.queue: list[Job] = []
        # Worker id -> the job it holds (None: idle since `idle[worker]`).
        self.holding: dict[str, Job | None] = {}
        self.idle: dict[str, datetime | None] = {}
        self.done: set[str] = set()
        self.submitted: set[str] = set()
        self.down: dict[str, datetime] = {}
        self.counter = 0
        self.version = 1

    # --- the world's plumbing ---------------------------------------------------------------------

    def send(self, command: Any) -> list[msgspec.Struct]:
        try:
            produced = ENDPOINT.decide(self.state, command)
        except GpuWorkerError:
            return []
        for data in produced:
            self.sequence += 1
            envelope = Envelope(
                id=f"e{self.sequence}",
                type=type(data).__name__,
                version=1,
                aggregate=AggregateRef("endpoint", ENDPOINT_ID),
                occurred_at=command.at,
                recorded_at=command.at,
                actor=command.actor,
                correlation_id="c",
                causation_id=f"cmd{self.sequence}",
                data=data,
                sequence=self.sequence,
            )
            self.state = ENDPOINT.evolve(self.state, envelope)
        return produced

    @property
    def endpoint(self) -> EndpointState:
        assert self.state is not None
        return self.state

    def load(self) -> QueueLoad:
        normal = [j for j in self.queue if not j.low]
        return QueueLoad(
            queued=len(normal),
            queued_low=len(self.queue) - len(normal),
            in_progress=sum(1 for j in self.holding.values() if j is not None),
            oldest_queued_at=min((j.queued_at for j in normal), default=None),
        )

    def gone(self, worker_id: str) -> None:
        """The worker ended: the job it held goes back to the queue (the dispatcher's requeue)."""
        job = self.holding.pop(worker_id, None)
        self.idle.pop(worker_id, None)
        if job is not None:
            self.queue.append(job)

    def report(self, worker_id: str, observed: str, exit_code: int | None = None) -> None:
        record = self.endpoint.live_workers.get(worker_id)
        assert record is not None
        self.send(
            ReportWorker(
                actor=agent_actor(record.placement.host_id),
                at=self.now,
                worker_id=worker_id,
                observed=observed,  # type: ignore[arg-type]
                exit_code=exit_code,
                lease_id=record.placement.lease_id,
            )
        )
        if worker_id not in self.endpoint.live_workers:
            self.gone(worker_id)

    def workers(self, status: str) -> list[str]:
        return sorted(w.id for w in self.endpoint.live_workers.values() if w.status == status)

    # --- rules ------------------------------------------------------------------------------------

    @initialize(
        low=st.integers(0, 2),
        spread=st.integers(0, 3),
        idle_s=st.integers(1, 20),
        scaler=st.sampled_from(("QUEUE_DELAY", "REQUEST_COUNT")),
        value=st.integers(1, 6),
    )
    def create(self, low: int, spread: int, idle_s: int, scaler: str, value: int) -> None:
        self.send(
            CreateEndpoint(
                actor=OWNER,
                at=self.now,
                name="scaled",
                template_id="t-1",
                env={},
                container=ContainerConfig(image_name="img:1"),
                settings=EndpointSettings(
                    gpu_ids=["NVIDIA GeForce RTX 4090"],
                    gpu_count=1,
                    workers_min=low,
                    workers_max=low + spread,
                    idle_timeout_s=idle_s,
                    scaler_type=scaler,
                    scaler_value=value,
                    execution_timeout_ms=600_000,
                ),
            )
        )
        assert self.state is not None

    @rule(count=st.integers(1, 8), low=st.booleans())
    def arrive(self, count: int, low: bool) -> None:
        for _ in range(count):
            self.counter += 1
            job = Job(id=f"j{self.counter}", queued_at=self.now, low=low)
            self.queue.append(job)
            self.submitted.add(job.id)

    @rule(step=steps_ms)
    def clock(self, step: int) -> None:
        self.now += timedelta(milliseconds=step)

    @rule()
    def autoscale(self) -> None:
        state = self.endpoint
        load = self.load()
        decisions = scale(state, load, dict(self.idle), dict(self.down), self.now, CONFIG)
        # What it keeps: live workers of the current version not stopped by these decisions.
        leaving = {d.worker_id for d in decisions if isinstance(d, StopWorker | WorkerLost)}
        current = [
            w
            for w in state.live_workers.values()
            if w.status != "STOPPING"
            and w.config_version == state.config_version
            and w.id not in leaving
        ]
        adds = sum(1 for d in decisions if isinstance(d, AddWorker))
        lost = sum(1 for d in decisions if isinstance(d, WorkerLost))
        # Its own rule, not only the endpoint's check of it.
        assert len(state.live_workers) - lost + adds <= state.settings.workers_max, decisions
        for decision in decisions:
            match decision:
                case AddWorker():
                    assert len(current) < state.settings.workers_min or load.queued > 0, (
                        decision,
                        load,
                    )
                    self.counter += 1
                    worker_id = f"w{self.counter}"
                    host = HOSTS[self.counter % len(HOSTS)]
                    if host in self.down:
                        host = next((h for h in HOSTS if h not in self.down), None) or host
                    self.send(
                        PlaceWorker(
                            actor=AUTOSCALER,
                            at=self.now,
                            worker_id=worker_id,
                            active=decision.active,
                            reason=decision.reason,
                            placement=WorkerPlacement(
                                host_id=host,
                                gpu_type_id="NVIDIA GeForce RTX 4090",
                                gpu_count=1,
                                gpu_uuids=[f"GPU-{worker_id}"],
                                lease_id=f"lease-{worker_id}",
                                vcpu_count=8,
                                memory_in_gb=32,
                            ),
                        )
                    )
                case StopWorker():
                    assert self.holding.get(decision.worker_id) is None, (
                        f"{decision.worker_id} holds a job and was asked to stop: {decision}"
                    )
                    self.send(
                        StopWorkerCommand(
                            actor=AUTOSCALER,
                            at=self.now,
                            worker_id=decision.worker_id,
                            reason=decision.reason,
                        )
                    )
                case WorkerLost():
                    self.send(
                        ReportWorker(
                            actor=AUTOSCALER,
                            at=decision.since,
                            worker_id=decision.worker_id,
                            observed="lost",
                            reason=decision.reason,
                        )
                    )
                    if decision.worker_id not in self.endpoint.live_workers:
                        self.gone(decision.worker_id)

    @precondition(lambda self: bool(self.state and self.workers("STARTING")))
    @rule(data=st.data(), outcome=st.sampled_from(("running", "running", "failed", "exited")))
    def host_starts(self, data: st.DataObject, outcome: str) -> None:
        worker_id = data.draw(st.sampled_from(self.workers("STARTING")))
        if self.endpoint.live_workers[worker_id].placement.host_id in self.down:
            return
        if outcome == "failed":
            self.report(worker_id, "failed")
            return
        self.report(worker_id, "running")
        self.idle[worker_id] = self.now
        self.holding[worker_id] = None
        if outcome == "exited":  # crashed at once
            self.report(worker_id, "exited", exit_code=1)

    @precondition(lambda self: bool(self.state and self.workers("STOPPING")))
    @rule(data=st.data())
    def host_stops(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(self.workers("STOPPING")))
        if self.endpoint.live_workers[worker_id].placement.host_id in self.down:
            return
        self.report(worker_id, "exited", exit_code=0)

    @precondition(lambda self: bool(self.state and self.workers("RUNNING")))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(self.workers("RUNNING")))
        if self.endpoint.live_workers[worker_id].placement.host_id not in self.down:
            self.report(worker_id, "exited", exit_code=137)

    @rule()
    def take(self) -> None:
        """Idle workers of the current version take jobs, normal priority first."""
        state = self.endpoint
        for worker_id, job in sorted(self.holding.items()):
            record = state.live_workers.get(worker_id)
            if job is not None or record is None or not self.queue:
                continue
            if record.config_version != state.config_version or record.status != "RUNNING":
                continue
            if record.placement.host_id in self.down:
                continue
            self.queue.sort(key=lambda j: (j.low, j.queued_at, j.id))
            self.holding[worker_id] = self.queue.pop(0)
            self.idle[worker_id] = None

    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        busy = sorted(w for w, j in self.holding.items() if j is not None)
        if not busy:
            return
        worker_id = data.draw(st.sampled_from(busy))
        if self.endpoint.live_workers[worker_id].placement.host_id in self.down:
            return
        job = self.holding[worker_id]
        assert job is not None
        self.done.add(job.id)
        self.holding[worker_id] = None
        self.idle[worker_id] = self.now

    @rule(host=st.sampled_from(HOSTS), down=st.booleans())
    def host_health(self, host: str, down: bool) -> None:
        if down:
            self.down.setdefault(host, self.now)
        else:
            self.down.pop(host, None)

    @rule()
    def new_version(self) -> None:
        self.version += 1
        self.send(
            UpdateEndpoint(
                actor=OWNER,
                at=self.now,
                env={"V": str(self.version)},
                container=ContainerConfig(image_name="img:1", env={"V": str(self.version)}),
            )
        )

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def within_workers_max(self) -> None:
        if self.state is not None:
            assert len(self.state.live_workers) <= self.state.settings.workers_max

    @invariant()
    def no_job_lost(self) -> None:
        if self.state is None:
            return
        held = {j.id for j in self.holding.values() if j is not None}
        queued = {j.id for j in self.queue}
        assert held.isdisjoint(queued) and held.isdisjoint(self.done)
        assert held | queued | self.done == self.submitted
        for worker_id, job in self.holding.items():
            if job is not None:
                assert worker_id in self.state.live_workers

    def teardown(self) -> None:
        """Arrivals end; hosts come back; the world settles: every job done, `workersMin` left."""
        if self.state is None:
            return
        self.down.clear()
        for _ in range(400):
            self.autoscale()
            for worker_id in self.workers("STARTING"):
                self.report(worker_id, "running")
                self.idle[worker_id] = self.now
                self.holding[worker_id] = None
            for worker_id in self.workers("STOPPING"):
                self.report(worker_id, "exited", exit_code=0)
            self.take()
            for worker_id, job in list(self.holding.items()):
                if job is not None:
                    self.done.add(job.id)
                    self.holding[worker_id] = None
                    self.idle[worker_id] = self.now
            self.within_workers_max()
            self.no_job_lost()
            self.now += timedelta(seconds=1)
        live = self.state.live_workers
        if self.state.settings.workers_max == 0:
            assert not live and not self.done
            return
        # Low-priority jobs never bring a worker up: with no warm worker they wait.
        assert all(j.low for j in self.queue), self.queue
        assert not self.queue or not live
        assert self.done | {j.id for j in self.queue} == self.submitted
        assert len(live) == self.state.settings.workers_min, live
        assert all(w.status == "RUNNING" for w in live.values())


AutoscalerWorld.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestAutoscaler = AutoscalerWorld.TestCase
