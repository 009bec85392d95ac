"""HTTP through the proxy: the request streamed to the instance's port (services/
upstream_http.py), the response streamed back as it comes (server-sent events and long
downloads included), neither held whole.

Limits: a body over `max_body_bytes` is refused (413; by its Content-Length before anything is
sent, else as soon as it passes the limit); an upstream silent for `idle_timeout_s` ends the
exchange (504 before the response started); a client that goes away ends it at once. Redirects
are the client's to follow: the only address ever contacted is the one `targets` gave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from litestar.types import HTTPScope, Receive, Send

from services.api.instance_proxy.headers import downstream_headers, upstream_headers
from services.api.instance_proxy.meter import InstanceMeter
from services.api.instance_proxy.routing import ProxyRoute
from services.api.instance_proxy.settings import ProxySettings
from services.api.instance_proxy.targets import BadGateway, Upstream
from services.errors import GpuWorkerError
from services.upstream_http import (
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("gpuworker.proxy")


class BodyTooLarge(GpuWorkerError):
    code = 413


class GatewayTimeout(GpuWorkerError):
    code = 504


class _ClientGone(Exception):
    pass


def _content_length(scope: HTTPScope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else -1
    return None


def _chunked(scope: HTTPScope) -> bool:
    return any(k.lower() == b"transfer-encoding" for k, _ in scope["headers"])


def _has_body(scope: HTTPScope) -> bool:
    if _chunked(scope):
        return True
    length = _content_length(scope)
    return length is not None and length != 0


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class HttpRelay:
    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings
        self._pool = UpstreamPool(settings.connect_timeout_s, settings.idle_timeout_s)

    async def close(self) -> None:
        await self._pool.close()

    async def relay(
        self,
        scope: HTTPScope,
        receive: Receive,
        send: Send,
        route: ProxyRoute,
        upstream: Upstream,
        meter: InstanceMeter,
    ) -> None:
        """Raises GpuWorkerError (413, 502, 504) when it fails before the response started."""
        limit = self._settings.max_body_bytes
        length = _content_length(scope)
        if length is not None and (length < 0 or length > limit):
            raise BodyTooLarge(f"request body is too large for the proxy (limit {limit} bytes)")

        async def body() -> AsyncIterator[bytes]:
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                assert isinstance(chunk, bytes)
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge(
                        f"request body is too large for the proxy (limit {limit} bytes)"
                    )
                if chunk:
                    meter.to_instance(len(chunk))
                    yield chunk
                if not message.get("more_body", False):
                    return

        client = scope.get("client")
        headers = upstream_headers(
            list(scope["headers"]), client[0] if client else None, scope["scheme"], route.prefix
        )
        # The body's framing is the proxy's to state: a length uvicorn has checked, else chunks
        # (never the client's Content-Length beside a Transfer-Encoding: no smuggling).
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        has_body = _has_body(scope)
        chunked = has_body and (length is None or _chunked(scope))
        if has_body and not chunked:
            headers.append((b"content-length", str(length).encode()))
        try:
            response = await self._pool.request(
                upstream.host,
                upstream.port,
                scope["method"],
                route.path,
                headers,
                body() if has_body else None,
                chunked=chunked,
            )
        except _ClientGone:
            return
        except UpstreamTimeout:
            raise GatewayTimeout(
                f"port {route.port} of instance {route.instance_id} did not answer in time"
            ) from None
        except UpstreamError:
            raise BadGateway(
                f"nothing answers on port {route.port} of instance {route.instance_id}: is its"
                f" server running and listening on 0.0.0.0:{route.port} in the container?"
            ) from None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": downstream_headers(response.headers),
                }
            )
            whole = response.whole_body()
            if whole is not None:
                # All there already: nothing to wait for, so no client to watch meanwhile.
                meter.from_instance(len(whole))
                await send({"type": "http.response.body", "body": whole, "more_body": False})
                return
            # The body goes on until it ends or the client leaves, whichever is first.
            streaming = asyncio.ensure_future(self._stream(response, send, meter))
            gone = asyncio.ensure_future(_until_disconnect(receive))
            await asyncio.wait({streaming, gone}, return_when=asyncio.FIRST_COMPLETED)
            streaming.cancel()
            gone.cancel()
            await asyncio.gather(streaming, gone, return_exceptions=True)
        finally:
            await response.aclose()

    async def _stream(self, response: UpstreamResponse, send: Send, meter: InstanceMeter) -> None:
        try:
            async for chunk in response.body():
                meter.from_instance(len(chunk))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # The instance stopped talking mid-response (or went silent past the idle limit):
            # nothing better to tell the client than the end of the body.
            log.info("proxied response ended early: %s", exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
