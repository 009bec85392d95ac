"""Finding 7: the login throttle cannot be raced, nor escaped with a forged X-Forwarded-For.

Concurrent guesses used to be checked before any of them had failed (the check and the count sat on
either side of the slow password hash), and uvicorn believed X-Forwarded-For from 127.0.0.1, so a
client on the same host picked any address it liked. These run on a stack of their own: they spend
127.0.0.1's per-address budget (see tests/api_helpers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from services.api.login_throttle import LoginThrottle
from services.config import Settings
from services.errors import TooManyRequests
from services.roles.api import server_config
from tests.api_helpers import PASSWORD, assert_error, signup, unique_email
from tests.servers import Stack, running_stack

PER_EMAIL = 5
PER_ADDRESS = 20


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, pg_base_uri: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("throttle"), pg_base_uri) as stack:
        yield stack


async def _guess_at_once(stack: Stack, email: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post("/auth/login", json={"email": email, "password": "guess-guess"})
                    for _ in range(count)
                )
            )
        )


def test_concurrent_guesses_beyond_the_budget_are_refused(own_stack: Stack) -> None:
    _, _, email = signup(own_stack)
    responses = asyncio.run(_guess_at_once(own_stack, email, 60))
    evaluated = [r for r in responses if r.status_code == 401]
    refused = [r for r in responses if r.status_code == 429]
    assert len(evaluated) + len(refused) == 60, [r.status_code for r in responses]
    # Each 401 is a password that was checked: no more than the per-email budget.
    assert len(evaluated) == PER_EMAIL, f"{len(evaluated)} of 60 concurrent guesses were checked"
    for response in refused:
        assert_error(response, 429, "email")
    # The right password is locked out too, for now.
    with own_stack.client() as client:
        locked = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert_error(locked, 429, "email")


def test_a_rotating_forwarded_for_does_not_escape_the_address_limit(own_stack: Stack) -> None:
    statuses = []
    with own_stack.client() as client:
        for i in range(PER_ADDRESS + 5):
            # Loopback addresses only: the header is forged, and nothing is contacted.
            forged = {"x-forwarded-for": f"127.0.{i // 250}.{2 + i % 250}"}
            response = client.post(
                "/auth/login",
                json={"email": unique_email("spoof"), "password": "guess-guess"},
                headers=forged,
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert_error(response, 429, "address")
    # Every request came from 127.0.0.1: it had one budget, whatever the header said.
    assert statuses.count(401) <= PER_ADDRESS, statuses
    assert statuses[-1] == 429, statuses


def test_forwarded_headers_are_trusted_only_from_named_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DATABASE_URL", "NATS_URL", "GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("GPUWORKER_TRUSTED_PROXIES", raising=False)
    # uvicorn's own default would trust 127.0.0.1 (or FORWARDED_ALLOW_IPS): neither counts.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    default = server_config(Settings.from_env(), "127.0.0.1", 8080)
    assert default.proxy_headers is False
    assert Settings.from_env().trusted_proxies == ()

    monkeypatch.setenv("GPUWORKER_TRUSTED_PROXIES", " 127.0.0.1, ::1 ")
    settings = Settings.from_env()
    assert settings.trusted_proxies == ("127.0.0.1", "::1")
    named = server_config(settings, "127.0.0.1", 8080)
    assert named.proxy_headers is True
    assert named.forwarded_allow_ips == ["127.0.0.1", "::1"]


def test_a_success_releases_its_reservation() -> None:
    throttle = LoginThrottle(per_email=2, per_address=3)
    # A success does not count against the address, and it forgives the email's failures.
    for _ in range(5):
        throttle.succeeded(throttle.reserve("a@x.io", "127.0.0.1"))
    throttle.reserve("b@x.io", "127.0.0.1")
    throttle.reserve("b@x.io", "127.0.0.1")
    with pytest.raises(TooManyRequests):
        throttle.reserve("b@x.io", "127.0.0.1")
    # An attempt that was never judged (the database was down) is given back.
    attempt = throttle.reserve("c@x.io", "127.0.0.1")
    throttle.release(attempt)
    throttle.succeeded(throttle.reserve("c@x.io", "127.0.0.1"))
    throttle.reserve("d@x.io", "127.0.0.1")
    with pytest.raises(TooManyRequests, match="address"):
        throttle.reserve("e@x.io", "127.0.0.1")
