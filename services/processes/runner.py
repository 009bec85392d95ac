"""Loads aggregates, decides, appends; on a concurrent append, catches up and decides again.

A decision may span several aggregates (placement: the host's GPU lease, the instance that holds
it, the network volume it mounts): a `Decision` collects each aggregate's new events and commits
them as one atomic append, so a crash can never leave half of it behind.

Retries are safe. A command's id fixes its events' ids (and so their Nats-Msg-Id), and the runner
remembers which commands each aggregate has already taken (the events' causation ids): the same
command sent again, after a lost answer or a crash anywhere, is answered with the aggregate's state
instead of being applied twice. A command carries the time after which its caller no longer waits
(`deadline`); it is never appended after that, so a caller that gave up is not surprised later."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from events.catalog import version_of
from events.envelope import AggregateRef, Envelope
from events.ids import derived_id
from events.store import (
    Append,
    AppendOutcomeUnknown,
    EventStore,
    EventStoreUnavailable,
    WrongExpectedSequence,
)
from services.command_wire import CommandEnvelope, Reply
from services.deciders.decider import Decider
from services.errors import GpuWorkerError, ServiceUnavailable
from services.role_metrics import (
    APPEND_SECONDS,
    DECIDER_COMMANDS,
    DECIDER_CONFLICTS,
    DECIDER_RETRIES,
)

log = logging.getLogger("gpuworker.deciders")

MAX_ATTEMPTS = 20
CACHE_SIZE = 50_000
# Commands remembered per aggregate: a retry arrives within seconds or minutes, not thousands of
# commands later.
APPLIED_REMEMBERED = 256

R = TypeVar("R")


@dataclass
class _Known:
    """What this runner knows of one aggregate: its state at a stream sequence, and the ids of the
    last commands that changed it."""

    state: Any
    sequence: int
    applied: deque[str] = field(default_factory=lambda: deque(maxlen=APPLIED_REMEMBERED))
    # False while the entry is a guess (an uncached aggregate assumed new) or may be stale.
    fresh: bool = False


class AlreadyApplied(Exception):
    """The command was taken before (a retry): answer with the aggregate as it is now."""


class Decision:
    """One decision over one or more aggregates, appended all or none by `DeciderRunner`."""

    def __init__(
        self,
        runner: DeciderRunner,
        command_id: str,
        correlation_id: str,
        deadline: float | None,
        source: str | None = None,
    ) -> None:
        self._runner = runner
        self.command_id = command_id
        self._correlation_id = correlation_id
        self._deadline = deadline
        # Every event of the decision carries the client's address (the audit log's "where").
        self._source = source
        self._touched: dict[AggregateRef, _Known] = {}
        self._pending: dict[AggregateRef, tuple[Any, list[Envelope]]] = {}

    async def state(self, aggregate_type: str, aggregate_id: str) -> Any:
        """The aggregate as this decision would leave it so far (read fresh from the store)."""
        ref = AggregateRef(aggregate_type, aggregate_id)
        if ref in self._pending:
            return self._pending[ref][0]
        return (await self._known(ref, fresh=True)).state

    async def ensure_new(self, aggregate_type: str, aggregate_id: str) -> None:
        """Raises `AlreadyApplied` if the store shows this very command (same id) was taken by the
        aggregate before: for plans that read before they decide."""
        known = await self._known(AggregateRef(aggregate_type, aggregate_id), fresh=False)
        if self.command_id not in known.applied and not known.fresh and known.state is not None:
            known = await self._known(AggregateRef(aggregate_type, aggregate_id), fresh=True)
        if self.command_id in known.applied:
            raise AlreadyApplied()

    async def decide(self, aggregate_type: str, aggregate_id: str, command: Any) -> Any:
        """Decide `command` on the aggregate (as this decision leaves it so far); hold its events
        for the commit and return the state they make. Refusals raise, and only ever on state just
        read from the store, never on a stale cache entry. Raises `AlreadyApplied` when the store
        shows that this very command (same id) was taken before."""
        decider = self._runner.decider(aggregate_type)
        ref = AggregateRef(aggregate_type, aggregate_id)
        if ref in self._pending:
            state, events = self._pending[ref]
            data = decider.decide(state, command)
        else:
            state, data = await self._decide_stored(ref, decider, command)
            events = []
        new = [self._wrap(ref, command, d, len(events) + i) for i, d in enumerate(data)]
        state = decider.fold(state, new)
        self._pending[ref] = (state, events + new)
        return state

    async def _decide_stored(
        self, ref: AggregateRef, decider: Decider[Any], command: Any
    ) -> tuple[Any, list[msgspec.Struct]]:
        known = await self._known(ref, fresh=False)
        if self.command_id in known.applied:
            raise AlreadyApplied()
        if not known.fresh:
            try:
                data = decider.decide(known.state, command)
            except GpuWorkerError:
                data = []
            if data:
                return known.state, data
            # Refused, or nothing to do, on a cached state that may be stale: look again.
            known = await self._known(ref, fresh=True)
            if self.command_id in known.applied:
                raise AlreadyApplied()
        return known.state, decider.decide(known.state, command)

    async def _known(self, ref: AggregateRef, fresh: bool) -> _Known:
        known = self._touched.get(ref)
        if known is None:
            known = self._runner.known(ref)
            self._touched[ref] = known
        if fresh and not known.fresh:
            known = await self._runner.catch_up(ref, known)
            self._touched[ref] = known
        return known

    def _wrap(self, ref: AggregateRef, command: Any, data: msgspec.Struct, index: int) -> Envelope:
        return Envelope(
            # Fixed by the command: the same command sent again makes the same events.
            id=derived_id("event", self.command_id, ref.type, ref.id, str(index)),
            type=type(data).__name__,
            version=version_of(data),
            aggregate=ref,
            occurred_at=command.at,
            recorded_at=datetime.now(UTC),
            actor=command.actor,
            correlation_id=self._correlation_id,
            causation_id=self.command_id,
            data=data,
            source=self._source,
        )

    def writes(self) -> list[Append]:
        return [
            Append(ref, events, self._touched[ref].sequence)
            for ref, (_state, events) in self._pending.items()
            if events
        ]

    def expired(self) -> bool:
        return self._deadline is not None and time.time() > self._deadline

    def touched(self) -> list[AggregateRef]:
        return list(self._touched)

    def result(self, ref: AggregateRef, sequences: dict[AggregateRef, int]) -> Reply:
        if ref in self._pending:
            state = self._pending[ref][0]
        else:
            state = self._touched[ref].state if ref in self._touched else None
        sequence = sequences.get(ref) or (
            self._touched[ref].sequence if ref in self._touched else 0
        )
        return _reply(state, sequence)

    def committed(self, sequences: dict[AggregateRef, int]) -> None:
        for ref, (state, events) in self._pending.items():
            if events:
                self._runner.remember(ref, state, sequences[ref], self.command_id)


def _reply(state: Any, sequence: int) -> Reply:
    return Reply(sequence=sequence, state=msgspec.Raw(msgspec.json.encode(state)))


class DeciderRunner:
    def __init__(self, store: EventStore, deciders: dict[str, Decider[Any]]) -> None:
        self._store = store
        self._deciders = deciders
        # Last known state per aggregate. It may be stale when several runners share the work;
        # a stale entry only costs a refused append and an incremental catch-up.
        self._cache: OrderedDict[AggregateRef, _Known] = OrderedDict()
        self._decoders = {t: msgspec.json.Decoder(d.command_type) for t, d in deciders.items()}
        self.conflicts = 0
        # Every aggregate's series exist from the start, at 0: a rate over them needs a first point.
        for aggregate_type in deciders:
            DECIDER_CONFLICTS.labels(aggregate_type)
            DECIDER_RETRIES.labels(aggregate_type)

    def decider(self, aggregate_type: str) -> Decider[Any]:
        return self._deciders[aggregate_type]

    async def handle(self, aggregate_type: str, envelope: CommandEnvelope) -> Reply:
        try:
            command = self._decoders[aggregate_type].decode(envelope.command)
        except msgspec.ValidationError as exc:
            return Reply(error=GpuWorkerError(f"malformed command: {exc}").body())
        ref = AggregateRef(aggregate_type, envelope.aggregate_id)

        async def plan(decision: Decision) -> None:
            await decision.decide(aggregate_type, envelope.aggregate_id, command)

        return await self.decide(envelope, ref, plan)

    async def decide(
        self,
        envelope: CommandEnvelope,
        target: AggregateRef,
        plan: Callable[[Decision], Awaitable[None]],
    ) -> Reply:
        """Run `plan` (which calls `Decision.decide` on any aggregates) and commit its events
        atomically, planning again on fresh state after a concurrent append. Answers with the
        state of `target`; errors come back in the Reply, in the seed's shape."""
        try:
            reply = await self._decide(envelope, target, plan)
        except ServiceUnavailable as err:
            DECIDER_COMMANDS.labels(target.type, "unavailable").inc()
            return Reply(error=err.body())
        except GpuWorkerError as err:
            DECIDER_COMMANDS.labels(target.type, "refused").inc()
            return Reply(error=err.body())
        except AppendOutcomeUnknown as exc:
            DECIDER_COMMANDS.labels(target.type, "unavailable").inc()
            log.warning("append outcome unknown: %s", exc)
            return Reply(
                error=ServiceUnavailable(
                    "the event store did not confirm the change; it may or may not have been"
                    " applied: send the same request again (same Idempotency-Key) to settle it"
                ).body()
            )
        except EventStoreUnavailable as exc:
            DECIDER_COMMANDS.labels(target.type, "unavailable").inc()
            log.warning("event store unavailable: %s", exc)
            return Reply(
                error=ServiceUnavailable(
                    "the event store is unavailable; nothing was changed, retry shortly"
                ).body()
            )
        return reply

    async def _decide(
        self,
        envelope: CommandEnvelope,
        target: AggregateRef,
        plan: Callable[[Decision], Awaitable[None]],
    ) -> Reply:
        for _ in range(MAX_ATTEMPTS):
            decision = Decision(
                self, envelope.id, envelope.correlation_id, envelope.deadline, envelope.source
            )
            try:
                await plan(decision)
            except AlreadyApplied:
                DECIDER_RETRIES.labels(target.type).inc()
                known = await self.catch_up(target, self.known(target))
                return _reply(known.state, known.sequence)
            writes = decision.writes()
            if not writes:
                DECIDER_COMMANDS.labels(target.type, "unchanged").inc()
                return decision.result(target, {})
            if decision.expired():
                raise ServiceUnavailable(
                    "the request expired before it could be applied; nothing was changed"
                )
            began = time.perf_counter()
            try:
                last = await self._store.append_all(writes)
            except WrongExpectedSequence:
                self.conflicts += 1
                DECIDER_CONFLICTS.labels(target.type).inc()
                for touched in decision.touched():
                    await self.catch_up(touched, self.known(touched))
                continue
            APPEND_SECONDS.observe(time.perf_counter() - began)
            sequences = {w.aggregate: seq for w, seq in zip(writes, last, strict=True)}
            decision.committed(sequences)
            DECIDER_COMMANDS.labels(target.type, "applied").inc()
            return decision.result(target, sequences)
        raise ServiceUnavailable("too much contention on this resource; retry shortly")

    async def run(
        self, aggregate_type: str, aggregate_id: str, command: msgspec.Struct, correlation_id: str
    ) -> Reply:
        """For callers in this process (placement, process managers): no wire in between."""
        return await self.handle(
            aggregate_type, CommandEnvelope.wrap(aggregate_id, command, correlation_id)
        )

    async def current(self, aggregate_type: str, aggregate_id: str) -> tuple[Any, int]:
        """The aggregate's state, caught up with the store now."""
        ref = AggregateRef(aggregate_type, aggregate_id)
        known = await self.catch_up(ref, self.known(ref))
        return known.state, known.sequence

    def known(self, ref: AggregateRef) -> _Known:
        """The cached entry, or a guess: not cached means assumed new. A create (a fresh id: the
        common case) then costs no read at all; anything else is refused or conflicts on that
        unchecked guess, catches up and is decided again on fresh state."""
        cached = self._cache.get(ref)
        if cached is not None:
            self._cache.move_to_end(ref)
            return _Known(cached.state, cached.sequence, cached.applied, fresh=False)
        return _Known(None, 0, fresh=False)

    async def catch_up(self, ref: AggregateRef, known: _Known) -> _Known:
        decider = self._deciders[ref.type]
        events = await self._store.load(ref, after=known.sequence)
        state, sequence = known.state, known.sequence
        applied = deque(known.applied, maxlen=APPLIED_REMEMBERED)
        if events:
            state = decider.fold(state, events)
            sequence = events[-1].sequence
            for event in events:
                if event.causation_id and (not applied or applied[-1] != event.causation_id):
                    applied.append(event.causation_id)
        fresh = _Known(state, sequence, applied, fresh=True)
        self._store_entry(ref, fresh)
        return fresh

    def remember(self, ref: AggregateRef, state: Any, sequence: int, command_id: str) -> None:
        previous = self._cache.get(ref)
        applied = deque(previous.applied if previous else (), maxlen=APPLIED_REMEMBERED)
        applied.append(command_id)
        self._store_entry(ref, _Known(state, sequence, applied, fresh=True))

    def _store_entry(self, ref: AggregateRef, known: _Known) -> None:
        self._cache[ref] = known
        self._cache.move_to_end(ref)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
