"""Where a proxied request may go: a declared `N/http` port of the caller's own RUNNING instance,
at the host address and port its host reported for it (`InstancePortsPublished`), and nowhere
else. Anyone but the owner (anonymous included) is told the instance does not exist.

Instances are read from the read model through a cache stamped by the instances projection's
checkpoint (services/api/read_cache.py), as the api's list reads are: an entry is good only while
that checkpoint has not moved, so a stop, a terminate or a change of owner or ports is seen by the
first request after its event is projected and its NOTIFY has reached this process (milliseconds;
in this process a stop's own answer waits for it). And for at most MAX_AGE_S whatever the
checkpoint says, as API keys are (services/api/api_key_lookup.py): that bound still holds should
a replica's LISTEN connection die without its noticing. While the watcher knows it has lost
PostgreSQL every request reads the row afresh."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.consistency import CheckpointWatcher
from services.api.instance_proxy.routing import ProxyRoute
from services.api.read_cache import ReadCache
from services.deciders.instance import InstanceState
from services.errors import Conflict, GpuWorkerError, NotFound, ServiceUnavailable

INSTANCES = PROJECTIONS["instances"]
MAX_AGE_S = 1.0
MAX_ENTRIES = 10_000
NOT_FOUND = "instance not found"


class Upstream(NamedTuple):
    instance_id: str
    host: str
    port: int


class BadGateway(GpuWorkerError):
    code = 502


class InstanceTargets:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        watcher: CheckpointWatcher,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self._pool = pool
        self._max_age_s = max_age_s
        # Counted in entries: an instance's state is small and of bounded size.
        self._cache = ReadCache[InstanceState | None](
            watcher, lambda _: 1, max_entries=MAX_ENTRIES, max_bytes=MAX_ENTRIES
        )

    async def _instance(self, instance_id: str) -> InstanceState | None:
        if not read_models.valid_id(instance_id):
            return None  # nothing to look up, nor to keep

        async def load() -> InstanceState | None:
            state: InstanceState | None = await read_models.get(self._pool, INSTANCES, instance_id)
            return state

        # The age bound as a moment the entry is good for: a new one each `max_age_s`.
        moment = int(time.monotonic() / self._max_age_s)
        return await self._cache.get_or_load(INSTANCES.name, instance_id, load, moment)

    async def upstream(self, user_id: str | None, route: ProxyRoute) -> Upstream:
        """Raises NotFound (not yours, not there, no such HTTP port), Conflict (not running) or
        ServiceUnavailable (running, but its port is not published yet)."""
        if user_id is None:
            raise NotFound(NOT_FOUND)
        state = await self._instance(route.instance_id)
        if state is None or state.owner_id != user_id or state.status == "TERMINATED":
            raise NotFound(NOT_FOUND)
        declared = f"{route.port}/http"
        if declared not in state.container.ports:
            http = [p for p in state.container.ports if p.endswith("/http")]
            raise NotFound(
                f"instance {state.id} has no HTTP port {route.port}; its HTTP ports:"
                f" {', '.join(http) or 'none'} (declare one as `{route.port}/http` in `ports`)"
            )
        if state.status != "RUNNING":
            raise Conflict(
                f"instance {state.id} is {state.status}: its ports answer only while it is RUNNING"
            )
        published = next((p for p in state.published_ports if p.port == declared), None)
        if published is None:
            raise ServiceUnavailable(
                f"instance {state.id}'s port {declared} is not published yet; retry shortly"
            )
        return Upstream(state.id, published.host_ip, published.host_port)
