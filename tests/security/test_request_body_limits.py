"""Finding 6: an oversized body is refused while it is read, not after it has all been buffered.

An anonymous POST with an Idempotency-Key and a 128 MiB body used to be read whole (quadratically)
by the idempotency middleware before the 1 MiB limit applied: 17 s and 330 MiB for one request."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.api_helpers import ERROR_TYPES, signup
from tests.servers import Stack

HUGE = 128 * 1024 * 1024
CHUNK = 256 * 1024
# Generous: the fixed api answers within milliseconds; the old one took many seconds.
FAST_S = 5.0
# The old code held the whole body (and copies of it) in memory.
MAX_GROWTH_KIB = 48 * 1024


def _api_pid(stack: Stack) -> int:
    """The pid of the api role that `gpuworker up` started for this stack."""
    assert stack.process is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == stack.process.pid and b"api" in argv and b"services.cli.main" in argv:
            return int(entry.name)
    raise AssertionError("no api process found under the stack")


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def _connect(stack: Stack) -> socket.socket:
    url = urlsplit(stack.url)
    assert url.hostname == "127.0.0.1"
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=20)
    return sock


def _head(path: str, stack: Stack, extra: dict[str, str]) -> bytes:
    host = urlsplit(stack.url).netloc
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if h)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def _assert_413(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, (status, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"code", "type", "message"}, error
    assert error["code"] == 413 and error["type"] == ERROR_TYPES[413], error
    assert "too large" in error["message"], error


def _routes(stack: Stack) -> list[tuple[str, dict[str, str]]]:
    token, _, _ = signup(stack)
    key = {"idempotency-key": f"big-{os.urandom(6).hex()}"}
    return [
        ("/auth/login", key),
        ("/templates", {**key, "authorization": f"Bearer {token}"}),
        ("/templates", {"authorization": f"Bearer {token}"}),
    ]


def test_an_announced_oversized_body_is_refused_before_it_is_read(stack: Stack) -> None:
    for path, headers in _routes(stack):
        with _connect(stack) as sock:
            started = time.monotonic()
            # Only the head: a server that waits for the body before refusing never answers.
            sock.sendall(_head(path, stack, {**headers, "content-length": str(HUGE)}))
            status, response_headers, body = _read_response(sock, started + 20)
            elapsed = time.monotonic() - started
        _assert_413(status, response_headers, body)
        assert elapsed < FAST_S, f"{path}: 413 after {elapsed:.1f}s"


def test_a_streamed_oversized_body_is_cut_off_while_it_is_read(stack: Stack) -> None:
    pid = _api_pid(stack)
    for path, headers in _routes(stack):
        peak_before = _peak_rss_kib(pid)
        with _connect(stack) as sock:
            started = time.monotonic()
            deadline = started + 30
            # Chunked, so no Content-Length announces the size: the limit must hold while reading.
            sock.sendall(_head(path, stack, {**headers, "transfer-encoding": "chunked"}))
            chunk = b"%x\r\n" % CHUNK + b"[" * CHUNK + b"\r\n"
            sent = 0
            while sent < HUGE and time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], 1.0)
                if readable:
                    break  # the server has answered: stop sending
                if writable:
                    sock.sendall(chunk)
                    sent += CHUNK
            status, response_headers, body = _read_response(sock, deadline)
            elapsed = time.monotonic() - started
        _assert_413(status, response_headers, body)
        assert elapsed < FAST_S, f"{path}: 413 after {elapsed:.1f}s and {sent >> 20} MiB"
        assert sent < HUGE // 4, f"{path}: the server read {sent >> 20} MiB before refusing"
        growth = _peak_rss_kib(pid) - peak_before
        assert growth < MAX_GROWTH_KIB, f"{path}: the api's peak memory grew {growth >> 10} MiB"
