"""Loads an aggregate, decides, appends; on a concurrent append, catches up and decides again."""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.catalog import version_of
from events.envelope import AggregateRef, Envelope
from events.ids import new_id
from events.store import EventStore, EventStoreUnavailable, WrongExpectedSequence
from services.command_wire import CommandEnvelope, Reply
from services.deciders.decider import Decider
from services.errors import GpuWorkerError, ServiceUnavailable

log = logging.getLogger("gpuworker.deciders")

MAX_ATTEMPTS = 20
CACHE_SIZE = 50_000


class DeciderRunner:
    def __init__(self, store: EventStore, deciders: dict[str, Decider[Any]]) -> None:
        self._store = store
        self._deciders = deciders
        # Last known (state, sequence) per aggregate. It may be stale when several runners share
        # the work; a stale entry only costs a refused append and an incremental catch-up.
        self._cache: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._decoders = {t: msgspec.json.Decoder(d.command_type) for t, d in deciders.items()}
        self.conflicts = 0

    async def handle(self, aggregate_type: str, envelope: CommandEnvelope) -> Reply:
        try:
            return await self._handle(aggregate_type, envelope)
        except GpuWorkerError as err:
            return Reply(error=err.body())
        except EventStoreUnavailable as exc:
            log.warning("event store unavailable: %s", exc)
            return Reply(
                error=ServiceUnavailable(
                    "the event store is unavailable; nothing was changed, retry shortly"
                ).body()
            )
        except msgspec.ValidationError as exc:
            return Reply(error=GpuWorkerError(f"malformed command: {exc}").body())

    async def _handle(self, aggregate_type: str, envelope: CommandEnvelope) -> Reply:
        decider = self._deciders[aggregate_type]
        command = self._decoders[aggregate_type].decode(envelope.command)
        ref = AggregateRef(aggregate_type, envelope.aggregate_id)
        state, sequence, fresh = await self._load(decider, ref)
        for _ in range(MAX_ATTEMPTS):
            try:
                data = decider.decide(state, command)
            except GpuWorkerError:
                # A refusal must not rest on a stale cache entry (another runner may have created
                # or changed the aggregate): refuse only on state just read from the store.
                if fresh:
                    raise
                state, sequence = await self._catch_up(decider, ref, state, sequence)
                fresh = True
                continue
            if not data:
                if fresh:
                    return self._reply(state, sequence)
                state, sequence = await self._catch_up(decider, ref, state, sequence)
                fresh = True
                continue
            events = [self._wrap(ref, envelope, command, d) for d in data]
            try:
                sequence = await self._store.append(ref, events, expected_sequence=sequence)
            except WrongExpectedSequence:
                self.conflicts += 1
                state, sequence = await self._catch_up(decider, ref, state, sequence)
                fresh = True
                continue
            state = decider.fold(state, events)
            self._remember(ref, state, sequence)
            return self._reply(state, sequence)
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
        decider = self._deciders[aggregate_type]
        ref = AggregateRef(aggregate_type, aggregate_id)
        state, sequence, fresh = await self._load(decider, ref)
        if not fresh:
            state, sequence = await self._catch_up(decider, ref, state, sequence)
        return state, sequence

    @staticmethod
    def _reply(state: Any, sequence: int) -> Reply:
        return Reply(sequence=sequence, state=msgspec.Raw(msgspec.json.encode(state)))

    @staticmethod
    def _wrap(
        ref: AggregateRef, envelope: CommandEnvelope, command: Any, data: msgspec.Struct
    ) -> Envelope:
        return Envelope(
            id=new_id(),
            type=type(data).__name__,
            version=version_of(data),
            aggregate=ref,
            occurred_at=command.at,
            recorded_at=datetime.now(UTC),
            actor=command.actor,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.id,
            data=data,
        )

    async def _load(self, decider: Decider[Any], ref: AggregateRef) -> tuple[Any, int, bool]:
        key = (ref.type, ref.id)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[0], cached[1], False
        # Not cached: assume it does not exist yet and let the store say otherwise. A create (a
        # fresh id: the common case) then costs no read at all, and anything else is refused or
        # conflicts on that unchecked guess, catches up and is decided again on fresh state.
        return None, 0, False

    async def _catch_up(
        self, decider: Decider[Any], ref: AggregateRef, state: Any, sequence: int
    ) -> tuple[Any, int]:
        events = await self._store.load(ref, after=sequence)
        if events:
            state = decider.fold(state, events)
            sequence = events[-1].sequence
        self._remember(ref, state, sequence)
        return state, sequence

    def _remember(self, ref: AggregateRef, state: Any, sequence: int) -> None:
        key = (ref.type, ref.id)
        self._cache[key] = (state, sequence)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
