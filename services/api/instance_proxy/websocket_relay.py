"""WebSockets through the proxy (Jupyter's kernels need them): the upstream handshake first, with
the subprotocols the client offered, then the client's is accepted with the one the instance
chose; then messages both ways, as they are, until either side closes or nothing has moved for
`idle_timeout_s`. The client's Origin is not passed on (the instance would compare it with its
own address and refuse); it is the proxy that decides who gets through, by the caller's token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import websockets
from litestar.types import Receive, Send, WebSocketScope
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from services.api.instance_proxy.headers import WEBSOCKET_HANDSHAKE, upstream_headers
from services.api.instance_proxy.meter import InstanceMeter
from services.api.instance_proxy.routing import ProxyRoute
from services.api.instance_proxy.settings import ProxySettings
from services.api.instance_proxy.targets import BadGateway, Upstream

# Close codes that may not be sent in a close frame (RFC 6455 §7.4.1): what to send instead.
_UNSENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}
IDLE_CLOSE = 1001


def _sendable(code: int | None) -> int:
    if code is None:
        return 1000
    code = _UNSENDABLE.get(code, code)
    return code if 1000 <= code <= 4999 else 1011


def _uri(upstream: Upstream, route: ProxyRoute) -> str:
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"ws://{host}:{upstream.port}{(route.path or b'/').decode('latin-1')}"


class WebSocketRelay:
    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings

    async def open(
        self, scope: WebSocketScope, route: ProxyRoute, upstream: Upstream
    ) -> ClientConnection:
        """The upstream side; raises BadGateway when the instance's port will not have it."""
        client = scope.get("client")
        headers = upstream_headers(
            list(scope["headers"]),
            client[0] if client else None,
            "https" if scope.get("scheme") == "wss" else "http",
            route.prefix,
            drop=WEBSOCKET_HANDSHAKE,
        )
        try:
            return await connect(
                _uri(upstream, route),
                additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                subprotocols=[Subprotocol(p) for p in scope["subprotocols"]] or None,
                open_timeout=self._settings.connect_timeout_s,
                ping_interval=None,
                max_size=self._settings.max_message_bytes,
                compression=None,
                proxy=None,
                user_agent_header=None,
                origin=None,
            )
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise BadGateway(
                f"port {route.port} of instance {route.instance_id} did not accept a WebSocket"
                f" ({type(exc).__name__}): is its server running and does it speak WebSocket"
                " at this path?"
            ) from None

    async def relay(
        self,
        receive: Receive,
        send: Send,
        upstream: ClientConnection,
        meter: InstanceMeter,
    ) -> None:
        """After the client's handshake was accepted: messages both ways until one side ends."""
        last = time.monotonic()

        def moved(size: int, count: Callable[[int], None]) -> None:
            nonlocal last
            last = time.monotonic()
            count(size)

        async def from_client() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close(_sendable(message.get("code")))
                    return
                if message["type"] != "websocket.receive":
                    continue
                data: str | bytes | None = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                moved(len(data), meter.to_instance)
                await upstream.send(data)

        async def from_instance() -> None:
            try:
                async for data in upstream:
                    moved(len(data), meter.from_instance)
                    if isinstance(data, str):
                        await send({"type": "websocket.send", "text": data, "bytes": None})
                    else:
                        await send({"type": "websocket.send", "bytes": data, "text": None})
            except websockets.exceptions.ConnectionClosed:
                pass
            await send(
                {
                    "type": "websocket.close",
                    "code": _sendable(upstream.close_code),
                    "reason": (upstream.close_reason or "")[:120],
                }
            )

        async def idle() -> None:
            limit = self._settings.idle_timeout_s
            # Sleeps until the last move plus the limit, again while things move.
            while (wait := last + limit - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            await upstream.close(IDLE_CLOSE, "idle")
            await send({"type": "websocket.close", "code": IDLE_CLOSE, "reason": "idle timeout"})

        sides: list[Awaitable[None]] = [from_client(), from_instance(), idle()]
        tasks = [asyncio.ensure_future(side) for side in sides]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
