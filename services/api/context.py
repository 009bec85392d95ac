"""What every handler needs, built once per process by the app's lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request
from litestar.security.jwt import JWTAuth
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.ids import new_id
from projections.aggregate_table import AggregateTable
from services.api.api_key_lookup import ApiKeyLookup
from services.api.command_bus import CommandBus
from services.api.consistency import CheckpointWatcher
from services.api.job_offers import RecentOffers
from services.api.job_payloads import JobPayloads
from services.api.job_waits import JobWaits
from services.api.login_throttle import LoginThrottle
from services.api.pagination import ListPage
from services.api.quotas import QuotaGuard
from services.api.read_cache import ReadCache
from services.api.request_ids import derived
from services.api.storage_capacity import StorageGuard
from services.api.verified_tokens import VerifiedTokens
from services.config import Settings
from services.deciders.decider import Command
from services.security.secret_box import SecretBox
from services.security.worker_tokens import WorkerTokens


@dataclass
class ApiContext:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    nc: NatsClient
    bus: CommandBus
    watcher: CheckpointWatcher
    throttle: LoginThrottle
    box: SecretBox
    jwt: JWTAuth[Any, Any]
    cache: ReadCache[ListPage]
    # Single read-model rows read on hot paths (an endpoint on every job call).
    rows: ReadCache[Any]
    quotas: QuotaGuard
    storage: StorageGuard
    api_keys: ApiKeyLookup
    worker_tokens: WorkerTokens
    job_waits: JobWaits
    payloads: JobPayloads
    offers: RecentOffers
    # Access tokens already verified, for the api's middleware and the instance proxy alike.
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)

    async def execute(
        self,
        projection: AggregateTable,
        aggregate_id: str,
        command: Command,
        request: Request[Any, Any, Any] | None = None,
        via: str | None = None,
        also_visible_in: tuple[str, ...] = (),
    ) -> Any:
        """Send a command; once its events are visible in the read model (and in the projections
        named in `also_visible_in`), return the decider's state. If a projection lags past the
        bound, the decider's state is still the truth and is returned: the write happened and is
        never reported as failed."""
        correlation_id = (request.headers.get("x-request-id") if request else None) or new_id()
        # `via` names a service subject (e.g. "placement") that answers for the aggregate.
        subject = via or projection.decider.aggregate_type
        reply = await self.bus.send(
            subject,
            aggregate_id,
            command,
            correlation_id,
            # Fixed by the request's Idempotency-Key: a retry sends the very same command.
            derived(request, "command", subject, aggregate_id, type(command).__name__),
            source_address(request),
        )
        timeout = self.settings.read_your_writes_timeout_s
        await asyncio.gather(
            *(
                self.watcher.wait(name, reply.sequence, timeout)
                for name in (projection.name, *also_visible_in)
            )
        )
        return msgspec.json.decode(reply.state, type=projection.decider.state_type | None)


def source_address(request: Request[Any, Any, Any] | None) -> str | None:
    """The client's address as the audit log records it: the peer's, or what a trusted proxy
    said it was (uvicorn's `forwarded_allow_ips`: GPUWORKER_TRUSTED_PROXIES)."""
    if request is None or request.client is None:
        return None
    return request.client.host


def context_of(request: Request[Any, Any, Any]) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
