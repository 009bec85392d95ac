"""HTTP/1.1 keep-alive that never drops a request a client has already sent: the api's and the
worker relay's uvicorn protocol (httptools' llhttp parser, as uvicorn's own) and idle timeout.

uvicorn closes a connection idle for `timeout_keep_alive` from a timer. When the event loop runs
late (a busy api), that timer can run after the client's next request has reached the socket but
before the loop has read it; closing a socket with unread bytes makes the kernel answer with a
reset, so the client loses a request it sent on a connection that was open (bench/jobs.py saw
`httpx.ReadError` 20 s into its load, on uvloop and on the stdlib loop alike). Here the timer
first asks the kernel whether bytes wait on the socket (FIONREAD); if so, the connection stays
open, the loop reads them on its next turn and serves the request as usual.

The idle timeout itself is longer than the pools of common clients keep an idle connection
(httpx 5 s, aiohttp, which the runpod SDK uses, 15 s; nginx's default is 75 s): the client then
closes first, which races with nothing. uvicorn's default, 5 s, equals httpx's, so the two
crossed by design."""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

KEEP_ALIVE_S = 75


def unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for the transport's socket that the loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except (OSError, ValueError):  # closed meanwhile
        return 0
    return count[0]


class KeepAliveHttpProtocol(HttpToolsProtocol):
    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing() and unread_bytes(self.transport):
            # The next request is here already: the loop reads it on its next turn (which
            # cancels this new timer); the timer stays armed should it never be read.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()
