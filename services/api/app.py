"""The Litestar application: wiring only. Handlers live in one module per resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusController
from litestar.security.jwt import JWTAuth, Token
from psycopg_pool import AsyncConnectionPool

from services.api.account import balance, me, update_me
from services.api.api_key_lookup import ApiKeyLookup
from services.api.api_keys import ApiKeyController
from services.api.audit import audit_trail
from services.api.auth import AuthController
from services.api.authentication import ApiKeyOrJwtMiddleware, AuthUser, user_from_token
from services.api.billing import (
    billing_export,
    instance_billing,
    serverless_billing,
    volume_billing,
)
from services.api.blog import BlogController
from services.api.body_limit import MAX_BODY_BYTES
from services.api.browser_session import served_over_https
from services.api.catalog import datacenters, gpu_types
from services.api.command_bus import CommandBus
from services.api.connection_limits import log_stream_limiter
from services.api.consistency import CheckpointWatcher
from services.api.context import ApiContext
from services.api.endpoints import EndpointController
from services.api.errors import EXCEPTION_HANDLERS
from services.api.event_catalog import asyncapi
from services.api.health import health
from services.api.idempotency import IdempotencyMiddleware
from services.api.instance_logs import LogReader, instance_logs
from services.api.instance_proxy.front import instance_proxy
from services.api.instances import InstanceController
from services.api.job_offers import RecentOffers
from services.api.job_payloads import JobPayloads
from services.api.job_waits import JobWaits
from services.api.jobs import JobController, status_body
from services.api.json_body import JsonBodyRequest
from services.api.login_throttle import LoginThrottle
from services.api.openapi_contract import document_contract
from services.api.operator_metrics import refresh_forever
from services.api.pagination import DEPENDENCIES, ListPage
from services.api.quotas import QuotaGuard, Quotas
from services.api.read_cache import ReadCache, encoded_size
from services.api.registry_auth import RegistryAuthController
from services.api.request_metrics import PROMETHEUS
from services.api.storage_capacity import StorageGuard, StorageRules
from services.api.templates import TemplateController
from services.api.volumes import VolumeController
from services.api.worker_logs import worker_logs
from services.api.worker_protocol import WorkerProtocolController
from services.api.write_locks import WriteLocks
from services.config import Settings
from services.console.docs_assets import docs_render_plugins
from services.console.render import template_config
from services.console.rest import RestRoutes
from services.console.web import console_router, static_router
from services.nats_connection import connect_role
from services.nats_permissions import API_USER
from services.processes.job_retention import sweep_forever
from services.processes.webhook_sender import WebhookSender
from services.security.api_keys import ApiKeyHasher
from services.security.secret_box import SecretBox
from services.security.worker_tokens import WorkerTokens

log = logging.getLogger("gpuworker.api")

# The worker protocol authenticates workers with their own tokens (services/api/worker_protocol.py);
# the web console (`/`, `/console/…`) with its session cookie (services/console/guards.py).
PUBLIC_PATHS = [
    "^/health",
    "^/auth/",
    "^/blog/",
    "^/docs",
    "^/metrics",
    "^/worker/",
    "^/$",
    "^/console(/|$)",
    "^/static/",
]


def create_app(settings: Settings) -> Litestar:
    jwt_auth = JWTAuth[AuthUser, Token](
        retrieve_user_handler=user_from_token,
        # An API key (`Authorization: Bearer gpw_…`) is tried first, then the JWT.
        authentication_middleware_class=ApiKeyOrJwtMiddleware,
        token_secret=settings.jwt_secret,
        exclude=PUBLIC_PATHS,
        openapi_security_scheme_name="BearerToken",
        description="An access token from /auth/login (a JWT), or an API key from POST /api-keys",
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=2,
            # Serverless traffic holds one for each job's input, take, result and answer: at 16,
            # 64 runsync clients with 64 takers queued ~100 ms for a connection per statement
            # (bench/jobs.py). PostgreSQL's default max_connections (100) still fits every role.
            max_size=32,
            timeout=3.0,
            open=False,
            # Reads are single statements: no BEGIN/COMMIT round trips. Multi-statement work
            # (idempotency claims) opens an explicit transaction.
            kwargs={"autocommit": True},
        )
        await pool.open(wait=False)
        nc = await connect_role(settings, API_USER)
        watcher = CheckpointWatcher(settings.database_url)
        await watcher.start()
        locks = WriteLocks(settings.database_url)
        await locks.open()
        job_waits = JobWaits(settings.database_url)
        await job_waits.start()

        payloads = JobPayloads(pool)

        async def render(job_id: str) -> bytes | None:
            return await status_body(payloads, job_id)

        webhooks = WebhookSender(
            pool, render, settings.webhook_retry_delay_s, settings.webhook_allowed_hosts
        )
        await webhooks.start()
        retention = asyncio.create_task(sweep_forever(pool), name="job-retention")
        metrics = asyncio.create_task(refresh_forever(pool), name="operator-metrics")
        app.state.ctx = ApiContext(
            settings=settings,
            pool=pool,
            nc=nc,
            bus=CommandBus(nc, settings.request_timeout_s),
            watcher=watcher,
            throttle=LoginThrottle(),
            box=SecretBox(settings.secret_key),
            jwt=jwt_auth,
            cache=ReadCache[ListPage](watcher, lambda page: len(page.body)),
            rows=ReadCache[Any](watcher, encoded_size),
            quotas=QuotaGuard(locks, Quotas.from_env()),
            storage=StorageGuard(locks, StorageRules.from_env()),
            api_keys=ApiKeyLookup(pool, watcher, ApiKeyHasher(settings.secret_key)),
            worker_tokens=WorkerTokens(settings.secret_key),
            job_waits=job_waits,
            payloads=payloads,
            offers=RecentOffers(),
        )
        # Reaching into instances: their container logs (from their hosts' agents) and the
        # proxy to their HTTP ports (served in front of this app: services/roles/api.py).
        app.state.log_reader = LogReader(nc, settings.request_timeout_s)
        app.state.log_streams = log_stream_limiter()
        app.state.instance_proxy = instance_proxy(app.state.ctx)
        # The console's pages call the REST handlers themselves (services/console/rest.py).
        app.state.console_rest = RestRoutes(app)
        try:
            yield
        finally:
            retention.cancel()
            metrics.cancel()
            await asyncio.gather(retention, metrics, return_exceptions=True)
            await webhooks.stop()
            await job_waits.stop()
            await app.state.instance_proxy.close()
            await locks.close()
            await watcher.stop()
            await nc.close()
            await pool.close()

    def document_error_contract(app: Litestar) -> None:
        document_contract(app.openapi_schema, PUBLIC_PATHS)

    return Litestar(
        route_handlers=[
            AuthController,
            me,
            update_me,
            balance,
            instance_billing,
            serverless_billing,
            volume_billing,
            billing_export,
            TemplateController,
            RegistryAuthController,
            ApiKeyController,
            gpu_types,
            datacenters,
            InstanceController,
            instance_logs,
            VolumeController,
            EndpointController,
            JobController,
            worker_logs,
            WorkerProtocolController,
            BlogController,
            audit_trail,
            asyncapi,
            health,
            PrometheusController,
            console_router(settings.jwt_secret, https=served_over_https()),
            static_router(),
        ],
        lifespan=[lifespan],
        on_startup=[document_error_contract],
        on_app_init=[jwt_auth.on_app_init],
        middleware=[PROMETHEUS.middleware, DefineMiddleware(IdempotencyMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        dependencies=DEPENDENCIES,
        request_max_body_size=MAX_BODY_BYTES,
        request_class=JsonBodyRequest,
        template_config=template_config(),
        openapi_config=OpenAPIConfig(
            title="GPUWorker API",
            version="0.1.0",
            path="/docs",
            # Served from the package: nothing from a CDN (air-gapped clusters).
            render_plugins=docs_render_plugins(),
        ),
        debug=False,
        # The process's logging is set up once by the CLI; one format across every role.
        logging_config=None,
    )
