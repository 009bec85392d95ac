"""Failed-login throttling per email and per client address (sliding window, in memory).

Per api process: with N replicas an attacker gets at most N times the budget, which still turns an
online password guess from millions per hour into dozens."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from services.errors import TooManyRequests


class LoginThrottle:
    def __init__(self, per_email: int = 5, per_address: int = 20, window_s: float = 900.0) -> None:
        self._limits = {"email": per_email, "address": per_address}
        self._window = window_s
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        return failures

    def check(self, email: str, address: str) -> None:
        now = time.monotonic()
        for kind, value in (("email", email), ("address", address)):
            failures = self._recent((kind, value), now)
            if len(failures) >= self._limits[kind]:
                retry_in = int(failures[0] + self._window - now) + 1
                raise TooManyRequests(
                    f"too many failed logins for this {kind}; try again in {retry_in} seconds",
                    retry_after_s=retry_in,
                )

    def failed(self, email: str, address: str) -> None:
        now = time.monotonic()
        self._failures[("email", email)].append(now)
        self._failures[("address", address)].append(now)

    def succeeded(self, email: str) -> None:
        self._failures.pop(("email", email), None)
