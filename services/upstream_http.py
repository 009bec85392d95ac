"""A lean HTTP/1.1 client: asyncio streams and httptools' C parser (llhttp, the one uvicorn's
server side uses), with a small pool of kept-alive connections per address. The instance proxy's
upstream side (services/api/instance_proxy/) streams through it; the simulated serverless worker
and bench/jobs make their whole-body calls to the api with `call`, to an `HttpTarget`.

Why not httpx: per proxied request it cost more CPU than everything else the proxy does
together (pool bookkeeping, h11 in pure Python, trace hooks), and the proxy needs none of its
features: the address is always an IP and a port, no redirects, no cookies, no TLS, no
environment proxies. What it must get right it does: the request's body streamed as it comes
(chunked when its length is unknown), the response's body handed on as it is parsed (chunked
decoded, close-delimited bodies ended by EOF), an idle limit on every read, and a connection
reused only after a complete response the server agreed to keep alive."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]
READ_SIZE = 65536
_NO_BODY_STATUS = frozenset({204, 304})


class HttpTarget(NamedTuple):
    """A plain-HTTP URL as the pool wants it: where to connect, and the request target."""

    host: str
    port: int
    target: str  # path and query

    @classmethod
    def of(cls, url: str) -> HttpTarget:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"this client speaks plain HTTP only, not {url!r}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, target)

    @property
    def host_header(self) -> tuple[bytes, bytes]:
        return (b"host", f"{self.host}:{self.port}".encode())


class UpstreamError(Exception):
    """The instance's port did not give a usable answer (refused, closed, malformed)."""


class UpstreamTimeout(UpstreamError):
    pass


class _Parsed:
    """httptools' callbacks: what has been parsed of one response so far."""

    def __init__(self) -> None:
        self.headers: Headers = []
        self.headers_done = False
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends, as CGI scripts write them (busybox httpd passes them on) and every
        # browser reads them; nothing else lenient: framing stays strict.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once this callback returns, llhttp resets for the next message, and
        # should_keep_alive() then answers False, which left every connection unused again.
        self.keep_alive = self.parser.should_keep_alive()


class UpstreamResponse:
    def __init__(
        self,
        pool: UpstreamPool,
        target: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parsed: _Parsed,
        bodyless: bool,
    ) -> None:
        self._pool = pool
        self._target = target
        self._reader = reader
        self._writer = writer
        self._parsed = parsed
        self._bodyless = bodyless
        self.status = parsed.parser.get_status_code()
        self.headers = parsed.headers
        self._done = bodyless or parsed.complete

    def whole_body(self) -> bytes | None:
        """The whole body when it has been read with the head already (a small response often
        has), else None: then it is `body()`'s to stream."""
        if not (self._done or self._parsed.complete):
            return None
        self._done = True
        chunks = self._parsed.chunks
        whole = b"".join(chunks)
        chunks.clear()
        return whole

    async def body(self) -> AsyncIterator[bytes]:
        parsed = self._parsed
        while True:
            while parsed.chunks:
                yield parsed.chunks.popleft()
            if self._done or parsed.complete:
                self._done = True
                return
            data = await self._pool.read(self._reader)
            if not data:
                if _close_delimited(parsed.headers):
                    self._done = True
                    return
                raise UpstreamError("the instance closed the connection mid-response")
            try:
                parsed.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise UpstreamError(f"malformed response: {exc}") from None

    async def aclose(self) -> None:
        """Back to the pool when the exchange ended cleanly and may go on, else closed."""
        reusable = (
            self._done and not self._bodyless and self._parsed.complete and self._parsed.keep_alive
        )
        if reusable:
            self._pool.give_back(self._target, self._reader, self._writer)
        else:
            self._writer.close()


def _close_delimited(headers: Headers) -> bool:
    names = {name.lower() for name, _ in headers}
    return b"content-length" not in names and b"transfer-encoding" not in names


def _request_head(method: str, target: bytes, headers: Headers, chunked: bool) -> bytes:
    if any(b <= 0x20 or b == 0x7F for b in target):
        raise UpstreamError("the request target holds characters HTTP does not allow")
    lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class UpstreamPool:
    def __init__(
        self,
        connect_timeout_s: float,
        idle_timeout_s: float,
        keep_per_target: int = 32,
        keep_for_s: float = 30.0,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._keep_per_target = keep_per_target
        self._keep_for_s = keep_for_s
        self._idle: dict[
            tuple[str, int], list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]
        ] = {}

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the read in a task of
        # its own, which was a fair share of the proxy's CPU per request.
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                return await reader.read(READ_SIZE)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the instance sent nothing for {self._idle_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"the connection to the instance failed: {exc}") from None

    def give_back(
        self, target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        kept = self._idle.setdefault(target, [])
        if len(kept) >= self._keep_per_target:
            writer.close()
            return
        kept.append((time.monotonic(), reader, writer))

    def _pooled(
        self, target: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        kept = self._idle.get(target) or []
        while kept:
            since, reader, writer = kept.pop()
            if time.monotonic() - since < self._keep_for_s and not (
                reader.at_eof() or writer.is_closing()
            ):
                return reader, writer
            writer.close()
        return None

    async def _connect(
        self, target: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                return await asyncio.open_connection(*target, limit=READ_SIZE)
        except TimeoutError:
            raise UpstreamTimeout(
                "the instance's port did not accept a connection in time"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"the instance's port refused the connection: {exc}") from None

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | bytes | None,
        chunked: bool,
    ) -> UpstreamResponse:
        """Sends the request (streaming `body`) and reads up to the end of the response's head.
        A kept-alive connection the instance had closed meanwhile is replaced once, when the
        request's body can be sent again (none, or bytes)."""
        address = (host, port)
        pooled = self._pooled(address)
        replayable = body is None or isinstance(body, bytes)
        if pooled is not None and replayable:
            try:
                return await self._exchange(
                    address, *pooled, method, target, headers, body, chunked
                )
            except UpstreamTimeout:
                raise
            except UpstreamError:
                pass  # stale: closed by the instance while it waited in the pool
        elif pooled is not None:
            pooled[1].close()
        reader, writer = await self._connect(address)
        return await self._exchange(address, reader, writer, method, target, headers, body, chunked)

    async def call(
        self, method: str, to: HttpTarget, headers: Headers, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """A whole request and the whole response: (status, body)."""
        if body is not None:
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        response = await self.request(
            to.host, to.port, method, to.target.encode(), headers, body, False
        )
        try:
            whole = response.whole_body()
            if whole is None:
                whole = b"".join([chunk async for chunk in response.body()])
            return response.status, whole
        finally:
            await response.aclose()

    async def _exchange(
        self,
        address: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | bytes | None,
        chunked: bool,
    ) -> UpstreamResponse:
        parsed = _Parsed()
        parser = parsed.parser
        try:
            writer.write(_request_head(method, target, headers, chunked))
            if isinstance(body, bytes):
                writer.write(body)
            elif body is not None:
                async for chunk in body:
                    if chunked:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    else:
                        writer.write(chunk)
                    await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
            await writer.drain()
            while not parsed.headers_done:
                data = await self.read(reader)
                if not data:
                    raise UpstreamError("the instance closed the connection without answering")
                parser.feed_data(data)
        except httptools.HttpParserError as exc:
            writer.close()
            raise UpstreamError(f"malformed response: {exc}") from None
        except OSError as exc:
            writer.close()
            raise UpstreamError(f"the connection to the instance failed: {exc}") from None
        except BaseException:
            writer.close()
            raise
        status = parser.get_status_code()
        bodyless = method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        return UpstreamResponse(self, address, reader, writer, parsed, bodyless)

    async def close(self) -> None:
        for kept in self._idle.values():
            for _since, _reader, writer in kept:
                with contextlib.suppress(Exception):
                    writer.close()
        self._idle.clear()
