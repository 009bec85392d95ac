"""The ASGI app in front of Litestar: requests for `/proxy/…` (and for `<id>-<N>.<domain>` when a
wildcard domain is set) go to the instance proxy, everything else to the api.

In front rather than a Litestar route, because the proxy's traffic is the customer's, not the
api's: Litestar's authentication (401 instead of the 404 an outsider must get), its idempotency
layer (a proxied POST with an Idempotency-Key is the instance's business), its body limit (1 MiB)
and its path handling would all get in the way; and a wildcard host's requests have any path at
all, which must never reach an api route."""

from __future__ import annotations

import logging
from typing import Any, cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import HTTPScope, Message, Receive, Scope, Send, WebSocketScope

from services.api.asgi_io import error_body, send_json
from services.api.authentication import user_of_headers
from services.api.connection_limits import ConnectionLimiter, proxy_limiter
from services.api.instance_proxy.headers import headers_size
from services.api.instance_proxy.http_relay import HttpRelay
from services.api.instance_proxy.meter import OPEN_HTTP, OPEN_WEBSOCKETS, InstanceMeters
from services.api.instance_proxy.routing import (
    ProxyRoute,
    is_proxy_path,
    route_of_host,
    route_of_path,
)
from services.api.instance_proxy.settings import ProxySettings
from services.api.instance_proxy.targets import NOT_FOUND, InstanceTargets, Upstream
from services.api.instance_proxy.websocket_relay import WebSocketRelay
from services.errors import GpuWorkerError, NotFound

log = logging.getLogger("gpuworker.proxy")


class InstanceProxy:
    """Made by the api's lifespan (it needs the database pool and the credential checks)."""

    def __init__(self, ctx: Any, settings: ProxySettings, limiter: ConnectionLimiter) -> None:
        self._ctx = ctx
        self.settings = settings
        self._limiter = limiter
        self._targets = InstanceTargets(ctx.pool, ctx.watcher)
        self._http = HttpRelay(settings)
        self._websocket = WebSocketRelay(settings)
        self._meters = InstanceMeters()

    async def close(self) -> None:
        await self._http.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute) -> None:
        if scope["type"] == ScopeType.HTTP:
            await self._handle_http(scope, receive, send, route)
        elif scope["type"] == ScopeType.WEBSOCKET:
            await self._handle_websocket(scope, receive, send, route)

    async def _owner_route(
        self, scope: HTTPScope | WebSocketScope, route: ProxyRoute
    ) -> tuple[str, Upstream]:
        """(user id, upstream); raises GpuWorkerError."""
        # A bearer credential only, never the console's session cookie: `/proxy/…` shares the
        # api's origin, so a page an instance serves there would run as the console's own.
        user = await user_of_headers(self._ctx, scope["headers"])
        upstream = await self._targets.upstream(user.id if user else None, route)
        return user.id if user else "", upstream

    async def _handle_http(
        self, scope: HTTPScope, receive: Receive, send: Send, route: ProxyRoute
    ) -> None:
        try:
            if headers_size(scope["headers"]) > self.settings.max_header_bytes:
                raise _HeadersTooLarge(
                    f"request headers are too large for the proxy (limit"
                    f" {self.settings.max_header_bytes} bytes)"
                )
            user_id, upstream = await self._owner_route(scope, route)
            if not route.path:
                # "/proxy/<id>/<N>": the app's relative links need the trailing "/".
                await _send_redirect(send, f"{route.prefix}/")
                return
            with self._limiter.held(user_id):
                OPEN_HTTP.inc()
                try:
                    await self._http.relay(
                        scope, receive, send, route, upstream, self._meters.of(upstream.instance_id)
                    )
                finally:
                    OPEN_HTTP.dec()
        except GpuWorkerError as exc:
            await _send_error(send, exc)

    async def _handle_websocket(
        self, scope: WebSocketScope, receive: Receive, send: Send, route: ProxyRoute
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            user_id, upstream = await self._owner_route(scope, route)
            with self._limiter.held(user_id):
                connection = await self._websocket.open(scope, route, upstream)
                OPEN_WEBSOCKETS.inc()
                try:
                    await send(
                        {
                            "type": "websocket.accept",
                            "subprotocol": connection.subprotocol,
                            "headers": [],
                        }
                    )
                    await self._websocket.relay(
                        receive, send, connection, self._meters.of(upstream.instance_id)
                    )
                finally:
                    OPEN_WEBSOCKETS.dec()
        except GpuWorkerError as exc:
            await _deny_websocket(scope, send, exc)


def _message(kind: str, **fields: Any) -> Message:
    """An ASGI message built by name (the proxy sends several kinds from one place)."""
    return cast(Message, {"type": kind, **fields})


class _HeadersTooLarge(GpuWorkerError):
    code = 431


async def _send_error(send: Send, exc: GpuWorkerError) -> None:
    retry_after = getattr(exc, "retry_after_s", None)
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after else []
    try:
        await send_json(send, exc.code, error_body(exc.code, exc.message), extra)
    except Exception as send_failed:  # the response had started already: nothing to add
        log.debug("proxy error not sent (%s): %s", send_failed, exc.message)


async def _send_redirect(send: Send, location: str) -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0")]
    await send(_message("http.response.start", status=307, headers=headers))
    await send(_message("http.response.body", body=b""))


async def _deny_websocket(scope: Scope, send: Send, exc: GpuWorkerError) -> None:
    """Refused before the handshake: as an HTTP response where the server can send one (the
    same 404 an HTTP request would get), else a close (which clients see as 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = error_body(exc.code, exc.message)
        headers = [(b"content-type", b"application/json")]
        await send(_message("websocket.http.response.start", status=exc.code, headers=headers))
        await send(_message("websocket.http.response.body", body=body))
        return
    await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})


class ProxyFront:
    """What uvicorn serves: `app` (the Litestar api), with proxy requests taken out first."""

    def __init__(self, app: Litestar) -> None:
        self.app = app

    def _route(self, scope: Scope) -> ProxyRoute | bool | None:
        """The route of a proxy request; False when the request is the api's; None when it is
        the proxy's but names nothing (404)."""
        proxy: InstanceProxy | None = getattr(self.app.state, "instance_proxy", None)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        domain = proxy.settings.domain if proxy else None
        if domain is not None:
            host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            if host.lower().partition(":")[0].endswith("." + domain.host):
                return route_of_host(host, domain, raw_path, query)
        if not is_proxy_path(scope["path"]):
            return False
        return route_of_path(raw_path, query)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        if route is False:
            await self.app(scope, receive, send)
            return
        proxy: InstanceProxy | None = getattr(self.app.state, "instance_proxy", None)
        if not isinstance(route, ProxyRoute) or proxy is None:
            refusal = NotFound(NOT_FOUND if proxy else "the proxy is not running")
            if scope["type"] == ScopeType.HTTP:
                await _send_error(send, refusal)
            elif (await receive())["type"] == "websocket.connect":
                await _deny_websocket(scope, send, refusal)
            return
        await proxy.handle(scope, receive, send, route)


def instance_proxy(ctx: Any) -> InstanceProxy:
    return InstanceProxy(ctx, ProxySettings.from_env(), proxy_limiter())
