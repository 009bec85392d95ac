"""The worker protocol's way out of a tenant's containers: a relay on the host that forwards the
worker protocol, and nothing else, to the api.

Why a relay: a worker must reach the api's worker routes from inside its container, but the api
may listen on 127.0.0.1 (`gpuworker up --host 127.0.0.1`), which a container cannot reach (its
loopback is its own), and a customer's container must not reach the rest of the api, or anything
else on the host, in any case. So the agent listens on the host's own address on each tenant's
network (the bridge's gateway, which Docker assigns when the runtime makes the network; never
configured, never a literal) and forwards to the api (GPUWORKER_AGENT_API_URL) only what is a
worker protocol request about an endpoint of the tenant whose network it came in on:
`/worker/v1/<endpoint>/<route>/…` with one of the protocol's routes and methods. Anything else is a
404 that never leaves the host. The api still checks the worker's token (good for its own endpoint
and worker only); the relay forwards the method, path, query, body, `Authorization` and
`Content-Type`, and nothing else (no forwarded-for header a worker could use to look like someone).

All listeners share one port (GPUWORKER_WORKER_RELAY_PORT; by default one the first listener gets
from the kernel), so a worker's URLs differ only by the address its runtime fills in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn
from litestar.enums import ScopeType
from litestar.types import HTTPScope, Receive, Scope, Send

from services.api.body_limit import RESULT_BODY_BYTES
from services.http_keep_alive import KEEP_ALIVE_S, KeepAliveHttpProtocol
from services.worker_env import ROUTE_METHODS, WORKER_ROUTES

log = logging.getLogger("gpuworker.agent.relay")

_PATH = re.compile(
    rf"^{re.escape(WORKER_ROUTES)}/(?P<endpoint>[A-Za-z0-9_.~-]{{1,128}})/(?P<route>[a-z-]+)/"
    r"[A-Za-z0-9_.~/-]{1,300}$"
)
FORWARDED_HEADERS = (b"authorization", b"content-type")
# Long polls are held up to GPUWORKER_JOB_POLL_MAX (20 s) at the api; this is well above.
UPSTREAM_READ_TIMEOUT_S = 120.0


def relayed_endpoint(method: str, path: str) -> str | None:
    """The endpoint id a worker protocol request is about, or None when it is not one the relay
    forwards (another path, route or method)."""
    match = _PATH.match(path)
    if match is None or ROUTE_METHODS.get(match["route"]) != method or ".." in path:
        return None
    return match["endpoint"]


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the agent's own decide when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# (gateway address, endpoint id) -> whether that endpoint's workers run on that network.
Allowed = Callable[[str, str], bool]


class WorkerRelay:
    def __init__(self, api_url: str, allowed: Allowed, port: int = 0) -> None:
        self._api_url = api_url.rstrip("/")
        self._allowed = allowed
        self.port = port
        self._servers: dict[str, tuple[_QuietServer, asyncio.Task[None]]] = {}
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(
            base_url=self._api_url,
            timeout=httpx.Timeout(10.0, read=UPSTREAM_READ_TIMEOUT_S),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            # Never the agent's environment proxies: the api is where it says.
            trust_env=False,
        )

    def addresses(self) -> list[str]:
        return sorted(self._servers)

    async def ensure(self, address: str) -> int:
        """Listening on `address` (a tenant network's gateway) at the relay's port; the port."""
        async with self._lock:
            if address in self._servers:
                return self.port
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, self.port))
            except OSError:
                sock.close()
                raise
            sock.listen(1024)
            sock.setblocking(False)
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self._app(address),
                lifespan="off",
                log_config=None,
                access_log=False,
                http=KeepAliveHttpProtocol,
                timeout_keep_alive=KEEP_ALIVE_S,
            )
            server = _QuietServer(config)
            task = asyncio.create_task(server.serve(sockets=[sock]), name=f"relay {address}")
            self._servers[address] = (server, task)
            # uvicorn says it has started only by a flag.
            while not server.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            log.info("worker relay listening on %s:%d", address, self.port)
            return self.port

    async def keep_only(self, addresses: set[str]) -> None:
        """Stop listening on addresses that are no tenant network's gateway any more."""
        for address in [a for a in self._servers if a not in addresses]:
            server, task = self._servers.pop(address)
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.keep_only(set())
        await self._client.aclose()

    def _app(self, address: str) -> Callable[[Scope, Receive, Send], Any]:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                await self._relay(address, scope, receive, send)

        return app

    async def _relay(self, address: str, scope: HTTPScope, receive: Receive, send: Send) -> None:
        endpoint_id = relayed_endpoint(scope["method"], scope["path"])
        if endpoint_id is None or not self._allowed(address, endpoint_id):
            await _answer(
                send,
                404,
                b'{"error":{"code":404,"type":"not_found","message":'
                b'"not a worker protocol route of this network\'s endpoints"}}',
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            body += chunk
            if len(body) > RESULT_BODY_BYTES:
                await _answer(
                    send,
                    413,
                    b'{"error":{"code":413,"type":"payload_too_large",'
                    b'"message":"request body is too large"}}',
                )
                return
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() in FORWARDED_HEADERS]
        query = scope.get("query_string", b"")
        url = scope["path"] + (f"?{query.decode('latin-1')}" if query else "")
        try:
            response = await self._client.request(
                scope["method"], url, headers=headers, content=bytes(body) if body else None
            )
        except httpx.HTTPError as exc:
            log.warning("worker relay: the api did not answer (%s)", exc or type(exc).__name__)
            await _answer(
                send,
                503,
                b'{"error":{"code":503,"type":"service_unavailable",'
                b'"message":"the api is not reachable from this host; retry shortly"}}',
            )
            return
        content_type = response.headers.get("content-type", "application/json")
        await _answer(send, response.status_code, response.content, content_type.encode())


async def _answer(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    headers: list[tuple[bytes, bytes]] = [(b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
