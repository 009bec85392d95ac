"""The lean HTTP/1.1 client's whole-body calls (the simulated worker's and the jobs benchmark's
way to the api): a body is sent with its length, a kept-alive connection is reused, and one the
server closed while it sat in the pool is replaced without losing or doubling the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httptools

from services.upstream_http import HttpTarget, UpstreamPool


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class EchoServer:
    """Answers each request with its method, target and body; closes a connection after
    `close_after` requests on it, without a word (as a server whose keep-alive ran out)."""

    def __init__(self, close_after: int) -> None:
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(self.close_after):
            request = _Request()
            parser = httptools.HttpRequestParser(request)
            while not request.complete:
                data = await reader.read(65536)
                if not data:
                    writer.close()
                    return
                parser.feed_data(data)
            self.requests.append(request.body)
            answer = parser.get_method() + b" " + request.url + b" " + request.body
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        writer.close()


@asynccontextmanager
async def echo_server(close_after: int) -> AsyncIterator[tuple[EchoServer, int]]:
    echo = EchoServer(close_after)
    server = await asyncio.start_server(echo.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield echo, port
    finally:
        await asyncio.sleep(0.05)  # the handlers see their clients close, and end
        server.close()


async def test_calls_send_their_bodies_on_one_kept_alive_connection() -> None:
    pool = UpstreamPool(5.0, 5.0)
    async with echo_server(close_after=100) as (echo, port):
        for n in range(3):
            done = HttpTarget.of(f"http://127.0.0.1:{port}/done?x=1")
            status, body = await pool.call("POST", done, [done.host_header], b'{"n":%d}' % n)
            assert (status, body) == (200, b'POST /done?x=1 {"n":%d}' % n)
        take = HttpTarget("127.0.0.1", port, "/take")
        assert (await pool.call("GET", take, []))[1] == b"GET /take "
        assert echo.connections == 1
        await pool.close()


async def test_a_connection_closed_in_the_pool_is_replaced_and_the_request_sent_once() -> None:
    pool = UpstreamPool(5.0, 5.0)
    async with echo_server(close_after=1) as (echo, port):
        for n in range(3):
            to = HttpTarget("127.0.0.1", port, "/r")
            status, body = await pool.call("POST", to, [], b"%d" % n)
            assert (status, body) == (200, b"POST /r %d" % n)
            await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
        assert echo.requests == [b"0", b"1", b"2"]
        assert echo.connections == 3
        await pool.close()
