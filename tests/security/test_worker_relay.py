"""The agent's worker relay (services/agent/worker_relay.py) forwards the worker protocol alone, for
the endpoints of the tenant whose network a request came in on, with only the headers the
protocol needs: anything else is a 404 that never reaches the api.

Real sockets on 127.0.0.1: the relay listens there (standing in for a tenant network's gateway)
and forwards to a recording upstream on another loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from services.agent.worker_relay import WorkerRelay, relayed_endpoint


def test_only_the_protocol_routes_with_their_methods_are_relayed() -> None:
    assert relayed_endpoint("GET", "/worker/v1/ep-1/job-take/w-1") == "ep-1"
    assert relayed_endpoint("POST", "/worker/v1/ep-1/job-done/w-1/job-9") == "ep-1"
    assert relayed_endpoint("GET", "/worker/v1/ep-1/ping/w-1") == "ep-1"
    assert relayed_endpoint("POST", "/worker/v1/ep-1/job-take/w-1") is None
    assert relayed_endpoint("DELETE", "/worker/v1/ep-1/ping/w-1") is None
    assert relayed_endpoint("GET", "/worker/v1/ep-1/admin/w-1") is None
    assert relayed_endpoint("GET", "/worker/v1/ep-1/job-take/../../../me") is None
    assert relayed_endpoint("GET", "/endpoints/ep-1/run") is None
    assert relayed_endpoint("GET", "/auth/me") is None
    assert relayed_endpoint("GET", "/worker/v1/ep-1/job-take/") is None


class Upstream:
    """An HTTP/1.1 server that records each request's head and answers 200 {}."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                text = head.decode("latin-1")
                self.heads.append(text)
                length = 0
                for line in text.split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def relayed() -> AsyncIterator[tuple[Upstream, str]]:
    upstream = Upstream()
    port = await upstream.start()
    relay = WorkerRelay(f"http://127.0.0.1:{port}", lambda _address, ep: ep == "mine")
    relay_port = await relay.ensure("127.0.0.1")
    try:
        yield upstream, f"http://127.0.0.1:{relay_port}"
    finally:
        await relay.close()
        assert upstream.server is not None
        upstream.server.close()


async def test_the_relay_forwards_its_tenants_protocol_requests_and_nothing_else(
    relayed: tuple[Upstream, str],
) -> None:
    upstream, base = relayed
    async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
        ok = await client.get(
            "/worker/v1/mine/job-take/w-1?v=1&job_in_progress=0",
            headers={
                "authorization": "gpwk_token",
                "x-forwarded-for": "127.0.0.9",
                "cookie": "session=stolen",
            },
        )
        assert ok.status_code == 200 and ok.json() == {}
        assert len(upstream.heads) == 1
        head = upstream.heads[0].lower()
        assert head.startswith("get /worker/v1/mine/job-take/w-1?v=1&job_in_progress=0 http/1.1")
        assert "authorization: gpwk_token" in head
        assert "x-forwarded-for" not in head and "cookie" not in head

        refused = [
            await client.get("/worker/v1/theirs/job-take/w-1"),  # another tenant's endpoint
            await client.get("/endpoints/mine/health"),  # the rest of the api
            await client.post("/auth/login", json={}),
            await client.post("/worker/v1/mine/ping/w-1"),  # a route's wrong method
        ]
        for response in refused:
            assert response.status_code == 404, response.text
            assert response.json()["error"]["type"] == "not_found"
        assert len(upstream.heads) == 1  # none of them reached the api
