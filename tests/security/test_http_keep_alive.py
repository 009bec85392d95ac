"""A client doing legitimate keep-alive load never has a request it sent dropped by the api.

Found by bench/jobs.py: `runsync` clients got `httpx.ReadError` (a TCP reset) about 20 s into the
load. A packet capture showed the api resetting a kept-alive connection 17 ms after the client's
next request had reached it: the connection had been idle 5.05 s (uvicorn's default keep-alive is
5 s, httpx keeps an idle connection 5 s too, so the two cross by design), the api's event loop
ran the keep-alive timer late, after the request had arrived but before reading it, and closing a
socket with unread bytes makes the kernel answer with a reset. These drive the api's own HTTP
protocol and keep-alive (services/roles/api.py's server_config) over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from services import event_loop
from services.config import Settings
from services.roles.api import server_config

BLOCK = "/block"
REQUEST = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture
def api_config(monkeypatch: pytest.MonkeyPatch) -> uvicorn.Config:
    for name in ("DATABASE_URL", "NATS_URL", "GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET"):
        monkeypatch.setenv(name, "x")
    return server_config(Settings.from_env(), "127.0.0.1", 0)


class _App:
    """Answers `ok`. On BLOCK it makes its event loop run late, as a busy api's does: it holds
    the loop past the keep-alive deadline of the other connection, so that the loop's next turn
    runs that connection's timer; and a timer of its own, due just before, holds the loop again
    (until released) on that turn, before the keep-alive timer runs."""

    def __init__(self) -> None:
        self.server: uvicorn.Server | None = None
        self.blocking = threading.Event()
        self.release = threading.Event()

    def _hold(self) -> None:
        self.blocking.set()
        self.release.wait(10)  # blocks the loop on purpose

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == BLOCK:
            assert self.server is not None
            loop = asyncio.get_running_loop()
            timers = [
                timer
                for connection in self.server.server_state.connections
                if (timer := getattr(connection, "timeout_keep_alive_task", None)) is not None
            ]
            assert timers, "no connection waits on its keep-alive timer"
            deadline = min(timer.when() for timer in timers)
            loop.call_at(deadline - 0.05, self._hold)
            time.sleep(max(0.0, deadline + 0.1 - loop.time()))  # noqa: ASYNC251 (on purpose)
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving(api: uvicorn.Config, app: _App, keep_alive_s: int, loop: str) -> Iterator[int]:
    """A server with the api's HTTP protocol on `loop`, in a thread; its port."""
    config = uvicorn.Config(
        app,
        http=api.http,
        timeout_keep_alive=keep_alive_s,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = app.server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    thread = threading.Thread(
        target=lambda: event_loop.run(server.serve(sockets=[sock]), loop), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(10)
        sock.close()


def _answer(conn: socket.socket) -> bytes:
    """The response to one request: `ok` with its headers, or what came before the connection
    ended."""
    conn.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("loop", event_loop.CHOICES)
def test_a_request_that_arrived_before_a_late_keep_alive_timer_is_served(
    api_config: uvicorn.Config, loop: str
) -> None:
    keep_alive_s = 1
    app = _App()
    with serving(api_config, app, keep_alive_s, loop) as port:
        kept = socket.create_connection(("127.0.0.1", port))
        busy = socket.create_connection(("127.0.0.1", port))
        try:
            kept.sendall(REQUEST)
            assert _answer(kept).startswith(b"HTTP/1.1 200")
            busy.sendall(REQUEST.replace(b"/ok", BLOCK.encode()))
            # The loop now runs late: the keep-alive deadline has passed, its timer has not run,
            # and the client reuses its kept-alive connection.
            assert app.blocking.wait(10)
            kept.sendall(REQUEST)
            time.sleep(0.2)
            app.release.set()
            try:
                answer = _answer(kept)
            except ConnectionResetError:
                answer = b"connection reset"
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert _answer(busy).startswith(b"HTTP/1.1 200")
        finally:
            kept.close()
            busy.close()


def test_the_api_keeps_an_idle_connection_longer_than_client_pools_do(
    api_config: uvicorn.Config,
) -> None:
    # The runpod SDK's aiohttp pool keeps an idle connection 15 s, httpx's 5 s: the api must
    # keep it longer, so that the client is the one to close it (which races with nothing).
    assert api_config.timeout_keep_alive > 15
    app = _App()
    keep_alive_s = api_config.timeout_keep_alive
    with (
        serving(api_config, app, keep_alive_s, "uvloop") as port,
        socket.create_connection(("127.0.0.1", port)) as conn,
    ):
        conn.sendall(REQUEST)
        assert _answer(conn).startswith(b"HTTP/1.1 200")
        time.sleep(5.5)  # past uvicorn's default keep-alive and httpx's pool expiry
        conn.sendall(REQUEST)
        try:
            answer = _answer(conn)
        except ConnectionResetError:
            answer = b"connection reset"
        assert answer.startswith(b"HTTP/1.1 200"), answer
