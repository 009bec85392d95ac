"""Failed-login throttling per email and per client address (sliding window, in memory).

Per api process: with N replicas an attacker gets at most N times the budget, which still turns an
online password guess from millions per hour into dozens.

An attempt is reserved (counted as a failure) before its password is verified, and given back
only once it has succeeded: the hash takes tens of milliseconds off the event loop, and checking
first and counting afterwards let 60 concurrent guesses all pass a check that none had failed yet.
The address is the peer's, not a forwarded header's, unless the operator names trusted proxies
(GPUWORKER_TRUSTED_PROXIES; see services/roles/api.py)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from services.errors import TooManyRequests


@dataclass(frozen=True)
class LoginAttempt:
    email: str
    address: str
    at: float


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

    def reserve(self, email: str, address: str) -> LoginAttempt:
        """Count this attempt as failed unless it is given back; 429 if the budget is spent."""
        now = time.monotonic()
        keys = (("email", email), ("address", address))
        for kind, value in keys:
            failures = self._recent((kind, value), now)
            if len(failures) >= self._limits[kind]:
                retry_in = int(failures[0] + self._window - now) + 1
                raise TooManyRequests(
                    f"too many failed logins for this {kind}; try again in {retry_in} seconds",
                    retry_after_s=retry_in,
                )
        for key in keys:
            self._failures[key].append(now)
        return LoginAttempt(email, address, now)

    def release(self, attempt: LoginAttempt) -> None:
        """Give back an attempt that was never judged (e.g. the database was down)."""
        for key in (("email", attempt.email), ("address", attempt.address)):
            failures = self._failures.get(key)
            if failures is not None and attempt.at in failures:
                failures.remove(attempt.at)

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The right password: it was no failure, and the email's earlier failures are forgiven."""
        self.release(attempt)
        self._failures.pop(("email", attempt.email), None)
