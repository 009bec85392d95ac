"""The deciders' picture of the fleet: every host's state, folded from `ev.host.>` as it happens.

It may lag by a moment; placement only uses it to rank candidates, and the host aggregate has the
final word on every allocation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events.catalog import decode_event
from events.subjects import STREAM, aggregate_type_filter
from services.deciders.host import HOST, HostState
from services.deciders.placement import free_counts

log = logging.getLogger("gpuworker.fleet")


class FleetView:
    def __init__(self) -> None:
        # host id -> (state, stream sequence of the last event folded into it)
        self._hosts: dict[str, tuple[HostState, int]] = {}
        # GPU type -> host id -> free GPUs of that type, kept with every state change so that
        # placement never recounts a thousand hosts' GPUs per request.
        self._free: dict[str, dict[str, int]] = {}
        self._states: dict[str, HostState] = {}
        self._caught_up = asyncio.Event()
        self._sub: Any = None

    def hosts(self) -> list[HostState]:
        return [state for state, _seq in self._hosts.values()]

    def get(self, host_id: str) -> HostState | None:
        entry = self._hosts.get(host_id)
        return entry[0] if entry else None

    def states_view(self) -> Mapping[str, HostState]:
        """Host id -> state, live (not a copy): read it, don't keep it."""
        return self._states

    def free(self, gpu_type_id: str) -> dict[str, int]:
        """Host id -> free GPUs of the type (hosts with none are absent)."""
        return self._free.get(gpu_type_id, {})

    def offer(self, state: HostState, sequence: int) -> None:
        """A state known at `sequence` (e.g. this runner's own append) replaces an older one."""
        entry = self._hosts.get(state.id)
        if entry is None or sequence > entry[1]:
            self._set(state, sequence)

    def _set(self, state: HostState, sequence: int) -> None:
        self._hosts[state.id] = (state, sequence)
        self._states[state.id] = state
        for by_host in self._free.values():
            by_host.pop(state.id, None)
        for gpu_type, n in free_counts(state).items():
            self._free.setdefault(gpu_type, {})[state.id] = n

    async def follow(self, nc: NatsClient, timeout_s: float = 30.0) -> None:
        """Subscribe, and return once every host event stored so far has been folded."""
        js = nc.jetstream()
        self._sub = await js.subscribe(
            aggregate_type_filter("host"),
            stream=STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_message,
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._caught_up.is_set():
            info = await self._sub.consumer_info()
            if not info.num_pending and not self._sub.pending_msgs:
                self._caught_up.set()
                break
            if asyncio.get_running_loop().time() > deadline:
                log.warning("fleet view still catching up after %ss", timeout_s)
                break
            await asyncio.sleep(0.05)

    async def _on_message(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        event = decode_event(msg.data, sequence)
        entry = self._hosts.get(event.aggregate.id)
        if entry is None or sequence > entry[1]:
            self._set(HOST.evolve(entry[0] if entry else None, event), sequence)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
