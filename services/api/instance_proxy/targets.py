"""Where a proxied request may go: a declared `N/http` port of the caller's own RUNNING instance,
at the host address and port its host reported for it (`InstancePortsPublished`), and nowhere
else. Anyone but the owner (anonymous included) is told the instance does not exist.

Instances are read from the read model and kept for at most a second: a stop or terminate may let
a request through for that second more, to a port where nothing listens any more."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from psycopg_pool import AsyncConnectionPool

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.instance_proxy.routing import ProxyRoute
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
    def __init__(self, pool: AsyncConnectionPool[Any], max_age_s: float = MAX_AGE_S) -> None:
        self._pool = pool
        self._max_age_s = max_age_s
        self._cache: dict[str, tuple[float, InstanceState | None]] = {}

    async def _instance(self, instance_id: str) -> InstanceState | None:
        now = time.monotonic()
        cached = self._cache.get(instance_id)
        if cached is not None and now - cached[0] < self._max_age_s:
            return cached[1]
        state: InstanceState | None = await read_models.get(self._pool, INSTANCES, instance_id)
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        self._cache[instance_id] = (now, state)
        return state

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
