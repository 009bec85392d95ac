"""`gpuworker api`: serves HTTP with uvicorn."""

from __future__ import annotations

import uvicorn
from litestar import Litestar
from litestar.types import ASGIApp

from projections.migrate import migrate
from services.api.app import create_app
from services.api.instance_proxy.front import ProxyFront
from services.api.worker_front import WorkerFront
from services.config import Settings
from services.http_keep_alive import KEEP_ALIVE_S, KeepAliveHttpProtocol


def _front(app: Litestar) -> ASGIApp:
    return WorkerFront(app, ProxyFront(app))


def server_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        # The worker protocol and the instance proxy take their requests before the api's
        # routing does.
        _front(create_app(settings)),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS) by default, so
        # anything on the api's host could pick the client address the login throttle counts. Only
        # the proxies the operator names are believed, and none by default.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        # WebSockets (the instance proxy's) through the `websockets` package, never guessed.
        ws="websockets-sansio",
        # llhttp's C parser (uvicorn's httptools protocol, named rather than auto-detected: a
        # missing wheel fails loudly), with a keep-alive that drops no request already sent.
        http=KeepAliveHttpProtocol,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


async def run_api(settings: Settings, host: str, port: int) -> None:
    await migrate(settings.database_url)
    await uvicorn.Server(server_config(settings, host, port)).serve()
