"""Property test of the job state machine: whatever workers, the dispatcher and the job's owner do,
in whatever order and at whatever times, a job completes at most once and its accepted result never
changes.

Hypothesis drives the pure JOB decider with takes (right and wrong attempts, several workers),
results (from the holder, from workers that lost the job, the same result again, another result),
requeues after a lost worker (right and stale attempts), cancels (also purge's queued-only
cancel), timeouts at any time, retries and clock moves. Events are applied as the runner applies
them (envelopes at the command's time), and after every step:

- at most one JobCompleted ever; once it happened the job stays COMPLETED with that result;
- every accepted result (JobCompleted, a worker's JobFailed) came from the worker holding the
  job's current attempt at that moment;
- IN_PROGRESS always has a worker, an attempt and a start; a final job has an expiry; attempts
  never go back;
- folding the stored events again (through their JSON) gives the same state.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from events.catalog import decode_event, version_of
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.job import JobCompleted, JobFailed, JobSpec, PayloadRef
from services.deciders.job import (
    FINAL,
    JOB,
    CancelJob,
    FinishJob,
    JobState,
    RequeueJob,
    RetryJob,
    SubmitJob,
    TakeJob,
    TimeOutJob,
)
from services.errors import GpuWorkerError

OWNER = "0190f1e2-0000-7000-8000-00000000000a"
STRANGER = "0190f1e2-0000-7000-8000-00000000000b"
DISPATCHER = "system:dispatcher"
ENDPOINT = "ep-1"
JOB_ID = "job-1"
WORKERS = ("w1", "w2", "w3")
RESULTS = tuple(PayloadRef(sha256=c * 64, size=n) for c, n in (("a", 1), ("b", 2), ("c", 3)))
BASE = datetime(2026, 1, 1, tzinfo=UTC)

workers = st.sampled_from(WORKERS)
results = st.sampled_from(RESULTS)
steps_ms = st.sampled_from((0, 1, 999, 1_000, 1_001, 5_000, 60_000, 3_600_000))


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = BASE
        self.state: JobState | None = None
        self.envelopes: list[Envelope] = []
        self.completed: list[PayloadRef] = []
        self.highest_attempt = 0
        self.counter = 0

    def send(self, command: Any) -> list[msgspec.Struct]:
        before = self.state
        try:
            produced = JOB.decide(before, command)
        except GpuWorkerError:
            return []
        for data in produced:
            self.counter += 1
            envelope = Envelope(
                id=f"e{self.counter}",
                type=type(data).__name__,
                version=version_of(data),
                aggregate=AggregateRef("job", JOB_ID),
                occurred_at=command.at,
                recorded_at=command.at,
                actor=command.actor,
                correlation_id="c",
                causation_id=f"cmd{self.counter}",
                data=data,
                sequence=self.counter,
            )
            if isinstance(data, JobCompleted | JobFailed) and data.result is not None:
                # Only the holder of the current attempt gets a result accepted.
                assert before is not None and before.status == "IN_PROGRESS"
                assert before.worker_id == data.worker_id == command.worker_id
                assert before.attempt == data.attempt
            if isinstance(data, JobCompleted):
                self.completed.append(data.result)
            self.envelopes.append(envelope)
            self.state = JOB.evolve(self.state, envelope)
        return produced

    @initialize(timeout=steps_ms.filter(bool), ttl=steps_ms.filter(bool))
    def submit(self, timeout: int, ttl: int) -> None:
        self.send(
            SubmitJob(
                actor=OWNER,
                at=self.now,
                spec=JobSpec(
                    endpoint_id=ENDPOINT,
                    input=PayloadRef(sha256="f" * 64, size=2),
                    execution_timeout_ms=timeout,
                    ttl_ms=ttl,
                    retention_s=300,
                ),
            )
        )
        assert self.state is not None and self.state.status == "IN_QUEUE"

    @rule(step=steps_ms)
    def clock(self, step: int) -> None:
        self.now += timedelta(milliseconds=step)

    @rule(worker=workers, offset=st.sampled_from((1, 1, 1, 0, 2, -1)))
    def take(self, worker: str, offset: int) -> None:
        assert self.state is not None
        attempt = self.state.attempt + offset
        self.send(
            TakeJob(
                actor=DISPATCHER,
                at=self.now,
                endpoint_id=ENDPOINT,
                worker_id=worker,
                attempt=attempt,
            )
        )

    @rule(worker=workers, result=results, failed=st.booleans(), repeat=st.booleans())
    def finish(self, worker: str, result: PayloadRef, failed: bool, repeat: bool) -> None:
        command = FinishJob(
            actor=DISPATCHER,
            at=self.now,
            endpoint_id=ENDPOINT,
            worker_id=worker,
            result=result,
            failed=failed,
        )
        first = self.send(command)
        if repeat:  # the SDK sends a done call again when it lost the answer
            again = self.send(command)
            if first:
                assert again == [], "the same result was accepted twice"

    @rule(holder=st.booleans(), worker=workers, stale=st.booleans())
    def lose_worker(self, holder: bool, worker: str, stale: bool) -> None:
        assert self.state is not None
        who = self.state.worker_id if holder and self.state.worker_id else worker
        attempt = self.state.attempt - (1 if stale else 0)
        self.send(
            RequeueJob(actor=DISPATCHER, at=self.now, worker_id=who, attempt=attempt, reason="lost")
        )

    @rule(only_queued=st.booleans(), stranger=st.booleans())
    def cancel(self, only_queued: bool, stranger: bool) -> None:
        actor = STRANGER if stranger else OWNER
        self.send(CancelJob(actor=actor, at=self.now, only_queued=only_queued))

    @rule()
    def timeout(self) -> None:
        self.send(TimeOutJob(actor=DISPATCHER, at=self.now))

    @rule(stranger=st.booleans())
    def retry(self, stranger: bool) -> None:
        self.send(RetryJob(actor=STRANGER if stranger else OWNER, at=self.now))

    @rule(worker=workers, result=results)
    def worker_as_user(self, worker: str, result: PayloadRef) -> None:
        """Only the dispatcher gives a job's platform commands."""
        before = self.state
        self.send(
            FinishJob(
                actor=OWNER, at=self.now, endpoint_id=ENDPOINT, worker_id=worker, result=result
            )
        )
        assert self.state == before

    @invariant()
    def completes_at_most_once(self) -> None:
        assert len(self.completed) <= 1
        if self.completed:
            assert self.state is not None
            assert self.state.status == "COMPLETED"
            assert self.state.result == self.completed[0]

    @invariant()
    def consistent(self) -> None:
        state = self.state
        if state is None:
            return
        if state.status == "IN_PROGRESS":
            assert state.worker_id is not None and state.started_at is not None
            assert state.attempt >= 1
        if state.status in FINAL:
            assert state.expires_ms is not None and state.finished_at is not None
        else:
            assert state.expires_ms is None
        assert state.attempt >= self.highest_attempt
        self.highest_attempt = state.attempt

    @invariant()
    def fold_equivalence(self) -> None:
        if not self.envelopes:
            return
        refolded = JOB.fold(
            None, [decode_event(encode_envelope(e), e.sequence) for e in self.envelopes]
        )
        assert refolded == self.state


JobMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestJobStateMachine = JobMachine.TestCase
