"""Follow one aggregate type as it is stored: an ordered consumer from stream sequence 1 folds
every event with the aggregate's own `evolve` into states kept in memory.

Used by the deciders' fleet view (every host) and their host work router; an agent's are filled by
its host's work feed (services/agent/host_work_feed.py) through `offer`.
A state offered from elsewhere (a command's reply) replaces an older one; events at or below the
sequence a state is known at are skipped, so nothing is applied twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events.catalog import decode_event
from events.subjects import STREAM, aggregate_type_filter
from services.deciders.decider import Decider

log = logging.getLogger("gpuworker.follow")

S = TypeVar("S")


class Handled:
    """How far a subscription's callback has got: the consumer it last handled a delivery of,
    and that delivery's number. The callback calls `mark` when it is done with a message."""

    def __init__(self) -> None:
        self.consumer = ""
        self.delivery = 0

    def mark(self, msg: Msg) -> None:
        self.consumer = msg.metadata.consumer or ""
        self.delivery = msg.metadata.sequence.consumer or 0


async def caught_up(sub: Any, handled: Handled, what: str, warn_every_s: float = 30.0) -> None:
    """Return once the ordered consumer `sub` has delivered every event stored so far and its
    callback has finished each (`handled`). Nothing pending on the server or in the client's
    queue is not enough: the callback may still be in the middle of the last one (it awaits),
    so the consumer's last delivery number must be one the callback has marked. An ordered
    consumer that was made again (after a gap) numbers its deliveries from 1 under a new name."""
    loop = asyncio.get_running_loop()
    started = warned = loop.time()
    while True:
        info = await sub.consumer_info()
        delivered = (info.delivered.consumer_seq or 0) if info.delivered else 0
        if (
            not info.num_pending
            and not sub.pending_msgs
            and (
                delivered == 0 or (handled.consumer == info.name and handled.delivery >= delivered)
            )
        ):
            return
        if loop.time() - warned > warn_every_s:
            warned = loop.time()
            log.warning(
                "%s: still catching up after %.0fs (%d events to go)",
                what,
                warned - started,
                info.num_pending,
            )
        await asyncio.sleep(0.05)


class AggregateFollower(Generic[S]):
    def __init__(
        self,
        decider: Decider[S],
        keep: Callable[[S], bool] = lambda _state: True,
        on_change: Callable[[S, int], None] = lambda _state, _sequence: None,
    ) -> None:
        self._decider = decider
        # Which aggregates to hold, judged on the state their first event makes.
        self._keep = keep
        self._on_change = on_change
        self._entries: dict[str, tuple[S, int]] = {}
        self._states: dict[str, S] = {}
        self._ignored: set[str] = set()
        self._sub: Any = None
        self._handled = Handled()

    def get(self, aggregate_id: str) -> S | None:
        return self._states.get(aggregate_id)

    @property
    def state_type(self) -> Any:
        return self._decider.state_type

    def entry(self, aggregate_id: str) -> tuple[S, int] | None:
        """The state held and the stream sequence it is known at."""
        return self._entries.get(aggregate_id)

    def states(self) -> Mapping[str, S]:
        """Live, not a copy: read it, don't keep it."""
        return self._states

    def offer(self, aggregate_id: str, state: S | None, sequence: int) -> bool:
        """Hold `state` (known at `sequence`) unless a newer one is held or it is not kept."""
        if state is None or aggregate_id in self._ignored:
            return False
        entry = self._entries.get(aggregate_id)
        if entry is not None and sequence <= entry[1]:
            return False
        if entry is None and not self._keep(state):
            self._ignored.add(aggregate_id)
            return False
        self._entries[aggregate_id] = (state, sequence)
        self._states[aggregate_id] = state
        self._on_change(state, sequence)
        return True

    async def follow(self, nc: NatsClient, warn_every_s: float = 30.0) -> None:
        """Subscribe, and return once every event stored so far has been folded: never before.
        (A caller that acts on "everything I know" — an agent removing containers it does not
        know — must not act on half the history: it would remove live containers.)"""
        self._sub = await nc.jetstream().subscribe(
            aggregate_type_filter(self._decider.aggregate_type),
            stream=STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_message,
        )
        await caught_up(self._sub, self._handled, self._decider.aggregate_type, warn_every_s)

    async def _on_message(self, msg: Msg) -> None:
        try:
            self._fold(msg)
        finally:
            self._handled.mark(msg)

    def _fold(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        event = decode_event(msg.data, sequence)
        aggregate_id = event.aggregate.id
        if aggregate_id in self._ignored:
            return
        entry = self._entries.get(aggregate_id)
        if entry is not None and sequence <= entry[1]:
            return
        self.offer(aggregate_id, self._decider.evolve(entry[0] if entry else None, event), sequence)

    async def stop(self) -> None:
        """Idempotent: stopping what is stopped does nothing."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
