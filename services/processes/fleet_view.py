"""The deciders' picture of the fleet: every host's state, folded from `ev.host.>` as it happens.

It may lag by a moment; placement only uses it to rank candidates, and the host aggregate has the
final word on every allocation."""

from __future__ import annotations

from collections.abc import Mapping

from nats.aio.client import Client as NatsClient

from services.aggregate_follower import AggregateFollower
from services.deciders.host import HOST, HostState
from services.deciders.placement import free_counts


class FleetView:
    def __init__(self) -> None:
        # GPU type -> host id -> free GPUs of that type, kept with every state change so that
        # placement never recounts a thousand hosts' GPUs per request.
        self._free: dict[str, dict[str, int]] = {}
        self._hosts = AggregateFollower(HOST, on_change=self._index)

    def hosts(self) -> list[HostState]:
        return list(self._hosts.states().values())

    def get(self, host_id: str) -> HostState | None:
        return self._hosts.get(host_id)

    def states_view(self) -> Mapping[str, HostState]:
        """Host id -> state, live (not a copy): read it, don't keep it."""
        return self._hosts.states()

    def free(self, gpu_type_id: str) -> dict[str, int]:
        """Host id -> free GPUs of the type (hosts with none are absent)."""
        return self._free.get(gpu_type_id, {})

    def offer(self, state: HostState, sequence: int) -> None:
        """A state known at `sequence` (e.g. this runner's own append) replaces an older one."""
        self._hosts.offer(state.id, state, sequence)

    def _index(self, state: HostState, _sequence: int) -> None:
        for by_host in self._free.values():
            by_host.pop(state.id, None)
        for gpu_type, n in free_counts(state).items():
            self._free.setdefault(gpu_type, {})[state.id] = n

    async def follow(self, nc: NatsClient) -> None:
        await self._hosts.follow(nc)

    async def stop(self) -> None:
        await self._hosts.stop()
