"""The job dispatcher: hands queued jobs to waiting workers, FIFO per endpoint, each to exactly one,
and watches the jobs being run (timeouts, lost workers, stop notices). It runs in the deciders
role and answers the worker protocol's NATS requests (services/worker_wire.py).

Memory, rebuilt from the stream: on start it folds every job event (`ev.job.>`, an ordered
consumer from sequence 1) with the job decider's own `evolve`, keeping the jobs that are not final
(finished ones leave memory; a few thousand stay at hand for a retry), then follows new events as
they are stored. From those it keeps, per endpoint, the queue in order (normal before low
priority, a requeued job at the head) and the workers' take requests waiting for work (long
polls: a future each, no database connection and no command slot held).

Taking is a decision of the job aggregate (`TakeJob` with the next attempt number), appended with
the event store's per-aggregate concurrency check, so a job is taken by one worker however many
dispatchers race for it; a dispatcher that loses the race skips that job. The take answers the
worker's request only after the append, so a job is never handed out without a durable record of
who holds it. If the worker's request ended meanwhile, the job is requeued at once.

Liveness: every dispatcher gets every ping (published, no queue group). A worker silent for
`lost_after_s` loses its jobs to the head of the queue; so does a job that a worker's pings stop
listing (two pings in a row, a moment after the take): the worker no longer runs it (the answer of
its take was lost, or its done call failed for good). A job past its executionTimeout is TIMED_OUT,
one past its ttl in the queue too; a job cancelled, timed out or requeued away from a live worker
is given to that worker's job-stop long poll, and given again if its pings still list it.

Several deciders replicas are correct (the aggregate decides; a replica acting on a stale view is
refused and skips) but each keeps all of this in memory; one is the tested configuration.

Known limit: the fold on start reads every job event ever stored; a snapshot of the live jobs
(e.g. in a JetStream key-value bucket) would bound it."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events.catalog import decode_event
from events.delivery import stream_sequence
from events.envelope import Envelope
from events.ids import derived_id
from events.job import JobSubmitted
from events.subjects import STREAM, aggregate_type_filter
from services.aggregate_follower import AggregateFollower, Handled, caught_up
from services.command_wire import CommandEnvelope, Reply
from services.deciders.autoscaler import QueueLoad
from services.deciders.decider import Command
from services.deciders.endpoint import ENDPOINT, EndpointState
from services.deciders.job import (
    CancelJob,
    FinishJob,
    JobState,
    RequeueJob,
    TakeJob,
    TimeOutJob,
)
from services.errors import GpuWorkerError, NotFound
from services.processes.job_board import EndpointQueue, Waiter, WorkerView
from services.processes.runner import DeciderRunner
from services.worker_wire import (
    DISPATCH_QUEUE,
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
    all_workers,
    endpoint_of,
)

log = logging.getLogger("gpuworker.dispatcher")

DISPATCHER = "system:dispatcher"
PURGED = "purged from the queue"
ENDPOINT_DELETED = "its endpoint was deleted"
FINISHED_KEPT = 10_000
PURGE_CONCURRENCY = 64


class PurgeQueue(Command, frozen=True, kw_only=True):
    """Cancel every job of the endpoint (the command's aggregate id) still in its queue."""


class PurgeResult(msgspec.Struct, frozen=True):
    removed: int


@dataclass(frozen=True)
class DispatchConfig:
    # A worker silent this long loses its jobs to the queue.
    lost_after_s: float = 30.0
    # The longest a take or job-stop long poll is held.
    poll_max_s: float = 20.0
    # A job taken less than this before a ping need not be listed in it yet.
    take_grace_s: float = 2.0
    tick_s: float = 0.2


def _leaving(endpoint: EndpointState, worker_id: str) -> bool:
    """A worker the platform placed that was asked to stop, or stopped: it takes no new job.
    (Workers someone runs by hand are not the endpoint's: they take jobs while they ping.)"""
    record = endpoint.live_workers.get(worker_id)
    if record is not None:
        return record.status == "STOPPING"
    return worker_id in endpoint.billed_workers


class JobDispatcher:
    def __init__(self, nc: NatsClient, runner: DeciderRunner, config: DispatchConfig) -> None:
        self._nc = nc
        self._runner = runner
        self._config = config
        self._endpoints = AggregateFollower[EndpointState](
            ENDPOINT, on_change=self._endpoint_changed
        )
        self._jobs: dict[str, tuple[JobState, int]] = {}
        self._finished: OrderedDict[str, tuple[JobState, int]] = OrderedDict()
        self._queues: dict[str, EndpointQueue] = {}
        self._workers: dict[tuple[str, str], WorkerView] = {}
        # The same views by endpoint (the autoscaler asks about one endpoint's workers).
        self._workers_of: dict[str, dict[str, WorkerView]] = {}
        # (when, job id, which deadline, the attempt or queue time it was set for)
        self._deadlines: list[tuple[float, str, str, float]] = []
        # Jobs with a timeout or requeue of ours on the way: one at a time.
        self._acting: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Any] = []
        self._job_sub: Any = None
        self._jobs_handled = Handled()
        self._ticker: asyncio.Task[None] | None = None
        self._ready = False
        # Each endpoint's live workers as last seen (a worker that leaves loses its jobs at once).
        self._live: dict[str, set[str]] = {}
        # Told when a job enters an endpoint's queue (the autoscaler: a cold start must not wait
        # for its next tick).
        self.on_queued: Callable[[str], None] | None = None

    # --- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._endpoints.follow(self._nc)
        self._job_sub = await self._nc.jetstream().subscribe(
            aggregate_type_filter("job"),
            stream=STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_job_message,
        )
        await caught_up(self._job_sub, self._jobs_handled, "job")
        self._ready = True
        now = time.time()
        for view in self._workers.values():
            view.seen(now)  # a restart is no reason to believe anyone dead
        for endpoint_id, endpoint in self._endpoints.states().items():
            if endpoint.deleted:
                self._spawn(self._cancel_all(endpoint_id, ENDPOINT_DELETED))
        handlers = (
            (TAKE, self._on_take),
            (STOP, self._on_stop),
            (DONE, self._on_done),
            (HOLD, self._on_hold),
        )
        for operation, handler in handlers:
            self._subs.append(
                await self._nc.subscribe(
                    all_workers(operation), queue=DISPATCH_QUEUE, cb=self._spawning(handler)
                )
            )
        self._subs.append(await self._nc.subscribe(all_workers(PING), cb=self._on_ping))
        self._ticker = asyncio.create_task(self._tick_forever(), name="job-dispatcher")
        log.info("job dispatcher ready: %d jobs queued or running", len(self._jobs))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        if self._job_sub is not None:
            await self._job_sub.unsubscribe()
        await self._endpoints.stop()
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *self._tasks, *([self._ticker] if self._ticker else []), return_exceptions=True
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished_task)

    def _finished_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("dispatcher task failed: %r", exc, exc_info=exc)

    def _spawning(self, handler: Any) -> Any:
        """A subscription callback that runs each message in a task of its own: long polls must
        not hold up the messages behind them."""

        async def callback(msg: Msg) -> None:
            self._spawn(handler(msg))

        return callback

    # --- what the stream says -----------------------------------------------------------------

    def _endpoint_changed(self, state: EndpointState, _sequence: int) -> None:
        if state.deleted and self._ready:
            self._spawn(self._cancel_all(state.id, ENDPOINT_DELETED))
        live = set(state.live_workers)
        gone = self._live.get(state.id, set()) - live
        self._live[state.id] = live
        if not self._ready:
            return
        leaving = {w for w in gone | set(self._waiting_workers(state.id)) if _leaving(state, w)}
        if leaving:
            self._drop_waiters(state.id, leaving)
        for worker_id in gone:
            # Stopped, crashed, killed or lost with its host: what it held goes back to the
            # head of the queue now, not after `lost_after_s` of silence.
            view = self._workers.get((state.id, worker_id))
            for job_id in list(view.held) if view is not None else []:
                entry = self._jobs.get(job_id)
                if entry is not None and entry[0].status == "IN_PROGRESS":
                    self._requeue(entry[0], f"its worker {worker_id} stopped")

    def _waiting_workers(self, endpoint_id: str) -> list[str]:
        queue = self._queues.get(endpoint_id)
        return [w.worker_id for w in queue.waiters] if queue is not None else []

    def _drop_waiters(self, endpoint_id: str, worker_ids: set[str]) -> None:
        """Their takes are answered now, with nothing: a worker stopped or stopping must not be
        handed a job (its container may be gone while its long poll is still open, held by a
        relay or a proxy)."""
        queue = self._queues.get(endpoint_id)
        if queue is None:
            return
        for waiter in list(queue.waiters):
            if waiter.worker_id in worker_ids and waiter.open and not waiter.assigning:
                queue.waiters.remove(waiter)
                waiter.future.set_result([])

    # --- what the autoscaler asks --------------------------------------------------------------

    def queue_load(self, endpoint_id: str) -> QueueLoad:
        """The endpoint's jobs now: queued (normal and low priority), running, the oldest wait."""
        queue = self._queues.get(endpoint_id)
        queued = queued_low = 0
        oldest: datetime | None = None
        for job_id in queue.queued if queue is not None else ():
            entry = self._jobs.get(job_id)
            if entry is None or entry[0].status != "IN_QUEUE":
                continue
            state = entry[0]
            if state.low_priority:
                queued_low += 1
                continue
            queued += 1
            if oldest is None or state.queued_at < oldest:
                oldest = state.queued_at
        views = self._workers_of.get(endpoint_id, {})
        running = sum(len(view.held) for view in views.values())
        return QueueLoad(
            queued=queued, queued_low=queued_low, in_progress=running, oldest_queued_at=oldest
        )

    def idle_since(self, endpoint_id: str) -> dict[str, datetime | None]:
        """Each worker of the endpoint it knows: when it last held nothing (None: it runs a
        job now)."""
        return {
            worker_id: None if view.held else datetime.fromtimestamp(view.idle_since, UTC)
            for worker_id, view in self._workers_of.get(endpoint_id, {}).items()
        }

    async def _on_job_message(self, msg: Msg) -> None:
        sequence = stream_sequence(msg)
        try:
            await self._follow(decode_event(msg.data, sequence))
        except Exception:
            log.exception("job event %d could not be followed", sequence)
        finally:
            self._jobs_handled.mark(msg)

    async def _follow(self, event: Envelope) -> None:
        job_id = event.aggregate.id
        known = self._jobs.get(job_id) or self._finished.get(job_id)
        if known is not None and event.sequence <= known[1]:
            return
        if known is None and not isinstance(event.data, JobSubmitted):
            # An event of a job finished long ago (a retry): its state from the store.
            state, sequence = await self._runner.current("job", job_id)
            if isinstance(state, JobState):
                self._offer(state, sequence)
            return
        self._offer(
            self._runner.decider("job").evolve(known[0] if known else None, event), event.sequence
        )

    def _offer(self, new: JobState, sequence: int) -> None:
        """A job's state at `sequence` (from the stream, or from a command's reply)."""
        known = self._jobs.get(new.id) or self._finished.get(new.id)
        if known is not None and sequence <= known[1]:
            return
        old = known[0] if known else None
        if new.final:
            self._jobs.pop(new.id, None)
            self._finished[new.id] = (new, sequence)
            self._finished.move_to_end(new.id)
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        else:
            self._finished.pop(new.id, None)
            self._jobs[new.id] = (new, sequence)
        self._index(old, new)

    def _index(self, old: JobState | None, new: JobState) -> None:
        now = time.time()
        endpoint_id = new.endpoint_id
        queue = self._queue(endpoint_id)
        held_by = old.worker_id if old is not None and old.status == "IN_PROGRESS" else None
        if held_by is not None and (new.status != "IN_PROGRESS" or new.worker_id != held_by):
            view = self._worker(endpoint_id, held_by)
            view.release(new.id, now)
            ran_it_out = new.status in ("COMPLETED", "FAILED") and new.result is not None
            if not ran_it_out:
                view.notice_stop(new.id, now)  # cancelled, timed out, requeued: drop it
        if new.status != "IN_QUEUE":
            queue.discard(new.id)
        if new.status == "IN_PROGRESS" and new.worker_id is not None:
            view = self._worker(endpoint_id, new.worker_id)
            view.held[new.id] = now
            view.seen(now)  # a take is a sign of life
            if (deadline := new.execution_deadline()) is not None:
                self._deadline(deadline, new.id, "execution", new.attempt)
        if new.status == "IN_QUEUE" and not (old is not None and old.status == "IN_QUEUE"):
            requeued = old is not None and old.status == "IN_PROGRESS"
            queue.push(new.id, new.low_priority, front=requeued)
            if (deadline := new.queue_deadline()) is not None:
                self._deadline(deadline, new.id, "queue", new.queued_at.timestamp())
            if self._ready:
                self._match(endpoint_id)
                if queue.queued and self.on_queued is not None:
                    self.on_queued(endpoint_id)
        endpoint = self._endpoints.get(endpoint_id)
        if self._ready and not new.final and endpoint is not None and endpoint.deleted:
            self._spawn(self._cancel(new.id, ENDPOINT_DELETED))

    def _deadline(self, at: datetime, job_id: str, kind: str, marker: float) -> None:
        heapq.heappush(self._deadlines, (at.timestamp(), job_id, kind, marker))

    def _queue(self, endpoint_id: str) -> EndpointQueue:
        queue = self._queues.get(endpoint_id)
        if queue is None:
            queue = self._queues[endpoint_id] = EndpointQueue()
        return queue

    def _worker(self, endpoint_id: str, worker_id: str) -> WorkerView:
        key = (endpoint_id, worker_id)
        view = self._workers.get(key)
        if view is None:
            view = self._workers[key] = WorkerView(last_seen=time.time())
            self._workers_of.setdefault(endpoint_id, {})[worker_id] = view
        return view

    # --- commands ------------------------------------------------------------------------------

    async def _run(self, job_id: str, command: Command, command_id: str | None = None) -> Reply:
        """Decide on the job and keep its new state; errors come back in the reply."""
        envelope = CommandEnvelope.wrap(job_id, command, f"dispatch:{job_id}", command_id)
        reply = await self._runner.handle("job", envelope)
        if reply.error is None:
            state = msgspec.json.decode(reply.state, type=JobState | None)
            if state is not None:
                self._offer(state, reply.sequence)
        return reply

    async def _act(self, job_id: str, command: Command) -> None:
        """A timeout or requeue of the dispatcher's own, one at a time per job."""
        if job_id in self._acting:
            return
        self._acting.add(job_id)
        try:
            reply = await self._run(job_id, command)
            if reply.error is not None and reply.error.code >= 500:
                log.warning("job %s: %s", job_id, reply.error.message)
        finally:
            self._acting.discard(job_id)

    async def _cancel(self, job_id: str, reason: str) -> None:
        await self._act(job_id, CancelJob(actor=DISPATCHER, at=datetime.now(UTC), reason=reason))

    async def _cancel_all(self, endpoint_id: str, reason: str) -> None:
        ids = [j for j, (s, _seq) in self._jobs.items() if s.endpoint_id == endpoint_id]
        await _bounded(self._cancel(job_id, reason) for job_id in ids)

    def _requeue(self, state: JobState, reason: str) -> None:
        assert state.worker_id is not None
        command = RequeueJob(
            actor=DISPATCHER,
            at=datetime.now(UTC),
            worker_id=state.worker_id,
            attempt=state.attempt,
            reason=reason,
        )
        self._spawn(self._act(state.id, command))

    # --- taking --------------------------------------------------------------------------------

    def _may_take(self, endpoint_id: str, version: int | None, worker_id: str) -> bool:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return True  # not followed yet: the api found it
        if endpoint.deleted or _leaving(endpoint, worker_id):
            return False
        # A worker of an older version drains: it finishes what it holds and gets nothing new.
        return version is None or version >= endpoint.config_version

    def _match(self, endpoint_id: str) -> None:
        queue = self._queue(endpoint_id)
        while queue.queued:
            waiter = queue.next_waiter()
            if waiter is None:
                return
            ids: list[str] = []
            while len(ids) < waiter.batch and (job_id := queue.pop()) is not None:
                entry = self._jobs.get(job_id)
                if entry is not None and entry[0].status == "IN_QUEUE":
                    ids.append(job_id)
            if not ids:
                queue.waiters.appendleft(waiter)
                return
            waiter.assigning = True
            self._spawn(self._assign(endpoint_id, waiter, ids))

    async def _take(self, endpoint_id: str, worker_id: str, job_id: str) -> Offer | bool | None:
        """The job for the worker (an Offer), None if someone else has it now, or False if the
        event store could not say."""
        entry = self._jobs.get(job_id)
        if entry is None or entry[0].status != "IN_QUEUE":
            return None
        command = TakeJob(
            actor=DISPATCHER,
            at=datetime.now(UTC),
            endpoint_id=endpoint_id,
            worker_id=worker_id,
            attempt=entry[0].attempt + 1,
        )
        reply = await self._run(job_id, command)
        if reply.error is not None:
            return False if reply.error.code >= 500 else None
        state = msgspec.json.decode(reply.state, type=JobState)
        return Offer(id=job_id, input=state.input)

    async def _assign(self, endpoint_id: str, waiter: Waiter, ids: list[str]) -> None:
        outcomes = await asyncio.gather(
            *(self._take(endpoint_id, waiter.worker_id, j) for j in ids)
        )
        offers = [o for o in outcomes if isinstance(o, Offer)]
        queue = self._queue(endpoint_id)
        for job_id, outcome in zip(ids, outcomes, strict=True):
            if outcome is False:  # unknown to the store: back where it was
                entry = self._jobs.get(job_id)
                if entry is not None and entry[0].status == "IN_QUEUE":
                    queue.push(job_id, entry[0].low_priority, front=True)
        waiter.assigning = False
        if offers or asyncio.get_running_loop().time() >= waiter.deadline:
            # (Past its deadline its request is waiting for exactly this answer.)
            waiter.future.set_result(offers)
        elif waiter.open:
            queue.waiters.appendleft(waiter)
        if not any(o is False for o in outcomes):
            self._match(endpoint_id)

    async def _on_take(self, msg: Msg) -> None:
        endpoint_id = endpoint_of(msg.subject)
        request = msgspec.json.decode(msg.data, type=TakeRequest)
        wait_s = max(0.0, min(request.wait_ms / 1000, self._config.poll_max_s))
        view = self._worker(endpoint_id, request.worker_id)
        view.seen(time.time())
        view.version = request.version
        offers: list[Offer] = []
        if not self._may_take(endpoint_id, request.version, request.worker_id):
            await asyncio.sleep(wait_s)
        else:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[list[Offer]] = loop.create_future()
            batch = max(1, min(request.batch, MAX_BATCH))
            waiter = Waiter(request.worker_id, batch, future, loop.time() + wait_s)
            self._queue(endpoint_id).waiters.append(waiter)
            self._match(endpoint_id)
            try:
                offers = await asyncio.wait_for(asyncio.shield(future), wait_s)
            except TimeoutError:
                if waiter.assigning:
                    offers = await future
                else:
                    waiter.expired = True
        try:
            await msg.respond(msgspec.json.encode(TakeReply(jobs=offers)))
        except Exception as exc:
            log.warning("a take's jobs could not be handed over (%s): back to the queue", exc)
            for offer in offers:
                entry = self._jobs.get(offer.id)
                if entry is not None and entry[0].status == "IN_PROGRESS":
                    self._requeue(entry[0], "its take was not answered")

    # --- results, partial outputs, pings, stops -------------------------------------------------

    async def _on_done(self, msg: Msg) -> None:
        endpoint_id = endpoint_of(msg.subject)
        request = msgspec.json.decode(msg.data, type=DoneRequest)
        self._worker(endpoint_id, request.worker_id).seen(time.time())
        command = FinishJob(
            actor=DISPATCHER,
            at=datetime.now(UTC),
            endpoint_id=endpoint_id,
            worker_id=request.worker_id,
            result=request.result,
            failed=request.failed,
        )
        try:
            reply = await self._run(request.job_id, command)
        except ValueError:  # not an id any job can have
            reply = Reply(error=NotFound("job not found").body())
        await msg.respond(msgspec.json.encode(reply))

    async def _on_hold(self, msg: Msg) -> None:
        endpoint_id = endpoint_of(msg.subject)
        request = msgspec.json.decode(msg.data, type=HoldRequest)
        entry = self._jobs.get(request.job_id) or self._finished.get(request.job_id)
        if entry is None:
            try:
                state, sequence = await self._runner.current("job", request.job_id)
            except ValueError:  # not an id any job can have
                state, sequence = None, 0
            entry = (state, sequence) if isinstance(state, JobState) else None
        if entry is None or entry[0].endpoint_id != endpoint_id:
            reply = Reply(error=NotFound("job not found").body())
        else:
            reply = Reply(sequence=entry[1], state=msgspec.Raw(msgspec.json.encode(entry[0])))
        await msg.respond(msgspec.json.encode(reply))

    async def _on_ping(self, msg: Msg) -> None:
        try:
            endpoint_id = endpoint_of(msg.subject)
            ping = msgspec.json.decode(msg.data, type=Ping)
        except (IndexError, msgspec.DecodeError) as exc:
            log.warning("unreadable ping on %s: %s", msg.subject, exc)
            return
        now = time.time()
        view = self._worker(endpoint_id, ping.worker_id)
        view.seen(now)
        view.version = ping.version
        view.unhealthy = ping.unhealthy
        listed = set(ping.job_ids)
        for job_id in listed - set(view.held):
            # It runs a job it does not hold (cancelled, timed out, or taken away from it).
            entry = self._jobs.get(job_id) or self._finished.get(job_id)
            if entry is not None and entry[0].endpoint_id == endpoint_id:
                view.notice_stop(job_id, now)
        for job_id in view.missing(listed, now, self._config.take_grace_s):
            entry = self._jobs.get(job_id)
            if entry is not None and entry[0].status == "IN_PROGRESS":
                self._requeue(
                    entry[0],
                    f"worker {ping.worker_id} no longer runs it (its pings stopped listing it)",
                )

    async def _on_stop(self, msg: Msg) -> None:
        endpoint_id = endpoint_of(msg.subject)
        request = msgspec.json.decode(msg.data, type=StopRequest)
        view = self._worker(endpoint_id, request.worker_id)
        view.seen(time.time())
        due = view.due_stops(time.time())
        if not due:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            view.stop_waiters.append(waiter)
            wait_s = max(0.0, min(request.wait_ms / 1000, self._config.poll_max_s))
            try:
                await asyncio.wait_for(waiter, wait_s)
            except TimeoutError:
                pass
            finally:
                if waiter in view.stop_waiters:
                    view.stop_waiters.remove(waiter)
            due = view.due_stops(time.time())
        await msg.respond(msgspec.json.encode(StopReply(due)))

    # --- time -------------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.tick_s)
            try:
                self.tick(time.time())
            except Exception:
                log.exception("dispatcher tick failed")

    def tick(self, now: float) -> None:
        """Time out what is past its deadline; give back the jobs of workers gone silent."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _at, job_id, kind, marker = heapq.heappop(self._deadlines)
            entry = self._jobs.get(job_id)
            if entry is None:
                continue
            state = entry[0]
            current = (
                state.status == "IN_PROGRESS" and state.attempt == marker
                if kind == "execution"
                else state.status == "IN_QUEUE" and state.queued_at.timestamp() == marker
            )
            if current:
                self._spawn(self._act(job_id, TimeOutJob(actor=DISPATCHER, at=datetime.now(UTC))))
        if len(self._deadlines) > 2 * len(self._jobs) + 1000:
            # Entries of jobs that moved on are dropped as they come due; don't let them pile up.
            self._deadlines = [d for d in self._deadlines if d[1] in self._jobs]
            heapq.heapify(self._deadlines)
        silent_after = now - self._config.lost_after_s
        for (endpoint_id, worker_id), view in list(self._workers.items()):
            if view.last_seen >= silent_after:
                continue
            for job_id in list(view.held):
                entry = self._jobs.get(job_id)
                if entry is not None and entry[0].status == "IN_PROGRESS":
                    self._requeue(
                        entry[0],
                        f"its worker {worker_id} stopped answering (nothing heard for"
                        f" {self._config.lost_after_s:g} s)",
                    )
            if not view.held and not view.stop_waiters and now - view.last_seen > 3600:
                del self._workers[(endpoint_id, worker_id)]
                self._workers_of.get(endpoint_id, {}).pop(worker_id, None)

    # --- the queue service (cmd.job_queue) ------------------------------------------------------

    async def handle_command(self, envelope: CommandEnvelope) -> Reply:
        try:
            command = msgspec.json.decode(envelope.command, type=PurgeQueue)
            return await self._purge(envelope, command)
        except GpuWorkerError as err:
            return Reply(error=err.body())

    async def _purge(self, envelope: CommandEnvelope, command: PurgeQueue) -> Reply:
        endpoint_id = envelope.aggregate_id
        endpoint, _seq = await self._runner.current("endpoint", endpoint_id)
        if not isinstance(endpoint, EndpointState) or endpoint.owner_id != command.actor:
            raise NotFound("endpoint not found")
        # Every job submitted before this command was sent is in the queue we purge.
        if self._job_sub is not None:
            await asyncio.wait_for(caught_up(self._job_sub, self._jobs_handled, "job"), 5.0)
        queued = self._queue(endpoint_id).ids()
        cancel = CancelJob(actor=command.actor, at=command.at, reason=PURGED, only_queued=True)
        replies = await _bounded(
            # Fixed by the purge's id: a purge sent again cancels nothing twice.
            self._run(job_id, cancel, derived_id("purge", envelope.id, job_id))
            for job_id in queued
        )
        removed = 0
        last = 0
        for reply in replies:
            if reply.error is not None:
                continue
            state = msgspec.json.decode(reply.state, type=JobState)
            if state.status == "CANCELLED" and state.reason == PURGED:
                removed += 1
                last = max(last, reply.sequence)
        return Reply(sequence=last, state=msgspec.Raw(msgspec.json.encode(PurgeResult(removed))))


async def _bounded(coroutines: Iterable[Coroutine[Any, Any, Reply | None]]) -> list[Any]:
    slots = asyncio.Semaphore(PURGE_CONCURRENCY)

    async def one(coroutine: Coroutine[Any, Any, Any]) -> Any:
        async with slots:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))
