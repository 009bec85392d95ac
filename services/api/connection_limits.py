"""How many long-lived connections into instances one user may hold at once on one api process:
proxied HTTP requests and WebSockets, and followed log streams. Each holds sockets, a task and
(for logs) a stream on the instance's host, so one customer's scripts cannot use them all up.

Per process, like the login throttle: N api replicas let a user hold N times as many."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from services.errors import TooManyRequests

PROXY_CONNECTIONS_PER_USER = 64
LOG_STREAMS_PER_USER = 8


class ConnectionLimiter:
    def __init__(self, per_user: int, what: str) -> None:
        if per_user < 1:
            raise ValueError(f"the limit on {what} per user must be at least 1")
        self.per_user = per_user
        self._what = what
        self._open: dict[str, int] = {}

    @contextmanager
    def held(self, user_id: str) -> Iterator[None]:
        """Raises TooManyRequests when the user already holds `per_user`."""
        count = self._open.get(user_id, 0)
        if count >= self.per_user:
            raise TooManyRequests(
                f"you have {count} {self._what} open on this server, the most allowed at once;"
                " close one and retry",
                retry_after_s=1,
            )
        self._open[user_id] = count + 1
        try:
            yield
        finally:
            left = self._open[user_id] - 1
            if left:
                self._open[user_id] = left
            else:
                del self._open[user_id]

    def open_for(self, user_id: str) -> int:
        return self._open.get(user_id, 0)


def proxy_limiter() -> ConnectionLimiter:
    per_user = int(
        os.environ.get("GPUWORKER_PROXY_CONNECTIONS_PER_USER", PROXY_CONNECTIONS_PER_USER)
    )
    return ConnectionLimiter(per_user, "connections through the instance proxy")


def log_stream_limiter() -> ConnectionLimiter:
    per_user = int(os.environ.get("GPUWORKER_LOG_STREAMS_PER_USER", LOG_STREAMS_PER_USER))
    return ConnectionLimiter(per_user, "followed log streams")
