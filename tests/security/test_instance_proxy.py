"""The api's proxy to instances' HTTP ports, on real Docker: busybox httpd behind `8080/http`, and a
WebSocket echo server (the host's own Python in a test image) behind `8765/http`.

Only the owner gets through; everyone else, anonymous included, is told the instance does not
exist. Only declared HTTP ports of a RUNNING instance are reachable, whatever the path says. The
caller's credential never reaches the container; forwarding headers are the proxy's own."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.api_helpers import assert_error, signup
from tests.docker_fixtures import python_image  # noqa: F401
from tests.instance_helpers import wait_status
from tests.security.conftest import (
    PROXY_CONNECTIONS_PER_USER,
    PROXY_IDLE_TIMEOUT_S,
    SecurityStack,
)
from tests.security.reach_helpers import HTTPD_COMMAND, HTTPD_PORTS, raw_http, running_instance

WS_PORT = 8765


@pytest.fixture(scope="module")
def owner(security_stack: SecurityStack) -> Iterator[tuple[httpx.Client, str]]:
    with security_stack.tenant() as client:
        yield client, client.headers["authorization"].removeprefix("Bearer ")


@pytest.fixture(scope="module")
def httpd(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str]
) -> Iterator[dict[str, Any]]:
    client, _ = owner
    with running_instance(client, "local/busybox:latest", HTTPD_COMMAND, HTTPD_PORTS) as running:
        yield running


@pytest.fixture(scope="module")
def echo(
    security_stack: SecurityStack,
    owner: tuple[httpx.Client, str],
    python_image: str,  # noqa: F811
) -> Iterator[dict[str, Any]]:
    client, _ = owner
    command = f"exec python3 /app/ws_echo.py {WS_PORT}"
    with running_instance(client, python_image, command, [f"{WS_PORT}/http"]) as running:
        yield running


def _proxied(client: httpx.Client, instance_id: str, path: str, port: int = 8080) -> str:
    return f"/proxy/{instance_id}/{port}{path}"


def _served(client: httpx.Client, path: str, timeout: float = 20.0) -> httpx.Response:
    """GET through the proxy until the server in the container answers (it starts after
    RUNNING)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code != 502 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_the_owner_reaches_an_http_port_and_the_response_lists_its_url(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, _ = owner
    instance_id = httpd["id"]
    url = f"{security_stack.stack.url}/proxy/{instance_id}/8080/"
    assert httpd["urls"] == [url]

    response = _served(client, _proxied(client, instance_id, "/"))

    assert response.status_code == 200, response.text
    assert response.text == "hello-from-httpd\n"
    # The port's root without its "/": redirected there, so relative links work.
    bare = client.get(f"/proxy/{instance_id}/8080", follow_redirects=False)
    assert bare.status_code == 307
    assert bare.headers["location"] == f"/proxy/{instance_id}/8080/"


def test_anyone_but_the_owner_is_told_the_instance_does_not_exist(
    security_stack: SecurityStack, httpd: dict[str, Any]
) -> None:
    path = f"/proxy/{httpd['id']}/8080/"
    other, _, _ = signup(security_stack.stack)
    with security_stack.stack.client(other) as stranger:
        key = stranger.post("/api-keys", json={"name": "k"}).json()["key"]
        assert_error(stranger.get(path), 404, "instance not found")
    with security_stack.stack.client(key) as with_key:
        assert_error(with_key.get(path), 404, "instance not found")
    with security_stack.stack.client() as anonymous:
        assert_error(anonymous.get(path), 404, "instance not found")
    with security_stack.stack.client("not-a-token") as forged:
        assert_error(forged.get(path), 404, "instance not found")
    with security_stack.stack.client() as anonymous:
        missing = anonymous.get("/proxy/no-such-instance/8080/")
        assert_error(missing, 404, "instance not found")


def test_only_declared_http_ports_are_reachable(
    owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, _ = owner
    instance_id = httpd["id"]
    _served(client, _proxied(client, instance_id, "/"))
    # A declared TCP port is not an HTTP port, and an undeclared one is nothing at all.
    assert_error(client.get(f"/proxy/{instance_id}/2222/"), 404, "no HTTP port 2222")
    assert_error(client.get(f"/proxy/{instance_id}/9999/"), 404, "8080/http")
    assert_error(client.get(f"/proxy/{instance_id}/0/"), 404)
    assert_error(client.get(f"/proxy/{instance_id}/99999/"), 404)


def test_path_tricks_stay_on_the_instance_port(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    """Dot segments, a second '//host', escapes: all go, as written, to port 8080 of the
    instance; none reaches the api, another port or another host."""
    client, token = owner
    base = security_stack.stack.url
    instance_id = httpd["id"]
    _served(client, _proxied(client, instance_id, "/"))
    api_port = base.rsplit(":", 1)[1]
    for path in (
        f"/proxy/{instance_id}/8080/../../../me",
        f"/proxy/{instance_id}/8080/..%2f..%2f2222/",
        f"/proxy/{instance_id}/8080//127.0.0.1:{api_port}/me",
        f"/proxy/{instance_id}/8080/%2e%2e/%2e%2e/me",
    ):
        answer = raw_http(
            base,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"application/json" not in head, (path, answer)  # never the api's answer
        assert b'"email"' not in body, (path, answer)
        assert re.match(rb"HTTP/1\.1 (404|400|403) ", head), (path, answer)  # httpd's own


def test_the_callers_credential_never_reaches_the_container(
    owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, token = owner
    instance_id = httpd["id"]
    response = _served(
        client,
        _proxied(client, instance_id, "/cgi-bin/env"),
    )
    spoofed = client.get(
        _proxied(client, instance_id, "/cgi-bin/env"),
        headers={"x-forwarded-for": "spoofed", "x-forwarded-prefix": "/elsewhere"},
    )

    for answer in (response, spoofed):
        assert answer.status_code == 200, answer.text
        assert token not in answer.text
        assert "HTTP_AUTHORIZATION" not in answer.text
    env = dict(line.split("=", 1) for line in spoofed.text.splitlines() if "=" in line)
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_PREFIX"] == f"/proxy/{instance_id}/8080"
    assert env["HTTP_X_FORWARDED_PROTO"] == "http"


def test_a_request_body_streams_to_the_instance_and_back(
    owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, _ = owner
    _served(client, _proxied(client, httpd["id"], "/"))
    body = bytes(range(256)) * 400

    echoed = client.post(_proxied(client, httpd["id"], "/cgi-bin/echo"), content=body)

    assert echoed.status_code == 200, echoed.text
    assert echoed.content == body


def test_a_body_over_the_limit_is_refused_before_it_is_sent(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, token = owner
    _served(client, _proxied(client, httpd["id"], "/"))
    answer = raw_http(
        security_stack.stack.url,
        f"POST /proxy/{httpd['id']}/8080/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {200 * 2**20}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b'"payload_too_large"' in answer


def test_bytes_through_the_proxy_are_counted_per_instance(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], httpd: dict[str, Any]
) -> None:
    client, _ = owner
    assert _served(client, _proxied(client, httpd["id"], "/")).status_code == 200
    with security_stack.stack.client() as anonymous:
        metrics = anonymous.get("/metrics").text
    sent = re.search(
        rf'gpuworker_proxy_bytes_total\{{direction="from_instance",instance="{httpd["id"]}"\}}'
        r" ([0-9.e+]+)",
        metrics,
    )
    assert sent is not None, metrics[-2000:]
    assert float(sent.group(1)) >= len("hello-from-httpd\n")


def _ws_url(security_stack: SecurityStack, instance_id: str) -> str:
    return security_stack.stack.url.replace("http://", "ws://") + f"/proxy/{instance_id}/{WS_PORT}/"


async def _echo_ready(url: str, token: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with connect(
                url, additional_headers={"authorization": f"Bearer {token}"}, proxy=None
            ):
                return
        except websockets.exceptions.InvalidStatus as exc:
            if exc.response.status_code != 502 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def test_a_websocket_passes_through_to_a_port_that_speaks_it(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], echo: dict[str, Any]
) -> None:
    _, token = owner
    url = _ws_url(security_stack, echo["id"])
    await _echo_ready(url, token)

    async with connect(
        url,
        additional_headers={"authorization": f"Bearer {token}"},
        subprotocols=[websockets.Subprotocol("echo")],
        proxy=None,
    ) as ws:
        assert ws.subprotocol == "echo"
        await ws.send("hello through the proxy")
        assert await asyncio.wait_for(ws.recv(), 10) == "hello through the proxy"
        blob = bytes(range(256)) * 400
        await ws.send(blob)
        assert await asyncio.wait_for(ws.recv(), 10) == blob


async def test_a_websocket_of_anyone_but_the_owner_is_refused_as_not_found(
    security_stack: SecurityStack, echo: dict[str, Any]
) -> None:
    url = _ws_url(security_stack, echo["id"])
    other, _, _ = signup(security_stack.stack)
    for headers in ({}, {"authorization": f"Bearer {other}"}):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect(url, additional_headers=headers, proxy=None):
                pass
        assert refused.value.response.status_code == 404
        assert b"instance not found" in refused.value.response.body


async def test_connections_per_user_are_limited_and_idle_websockets_close(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str], echo: dict[str, Any]
) -> None:
    _, token = owner
    url = _ws_url(security_stack, echo["id"])
    await _echo_ready(url, token)
    headers = {"authorization": f"Bearer {token}"}
    held = [
        await connect(url, additional_headers=headers, proxy=None)
        for _ in range(PROXY_CONNECTIONS_PER_USER)
    ]
    try:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect(url, additional_headers=headers, proxy=None):
                pass
        assert refused.value.response.status_code == 429
        # Nothing moves on them: the proxy closes each after its idle limit, which frees them.
        started = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await asyncio.wait_for(held[0].recv(), PROXY_IDLE_TIMEOUT_S + 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert time.monotonic() - started >= PROXY_IDLE_TIMEOUT_S - 1
    finally:
        for ws in held:
            await ws.close()
    async with connect(url, additional_headers=headers, proxy=None) as again:
        await again.send("free again")
        assert await asyncio.wait_for(again.recv(), 10) == "free again"


def test_a_stop_or_terminate_closes_the_proxy_at_once(
    security_stack: SecurityStack, owner: tuple[httpx.Client, str]
) -> None:
    """The proxy keeps what it read of an instance only while the instances projection has not
    moved: the request right after a stop or terminate answered is refused, however recently
    the instance was reached."""
    client, _ = owner
    with running_instance(client, "local/busybox:latest", HTTPD_COMMAND, HTTPD_PORTS) as running:
        instance_id = running["id"]
        path = _proxied(client, instance_id, "/")
        assert _served(client, path).status_code == 200

        stopped = client.post(f"/instances/{instance_id}/stop")
        assert stopped.status_code == 200, stopped.text
        assert_error(client.get(path), 409, "only while it is RUNNING")

        wait_status(client, instance_id, "STOPPED", 40)
        started = client.post(f"/instances/{instance_id}/start")
        assert started.status_code == 200, started.text
        wait_status(client, instance_id, "RUNNING", 40)
        assert _served(client, path).status_code == 200

        assert client.delete(f"/instances/{instance_id}").status_code == 204
        assert_error(client.get(path), 409, "is TERMINATING")
