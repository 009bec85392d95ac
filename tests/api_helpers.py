"""Shared helpers for the HTTP API tests: fresh users, the seed's error shape, waiting.

Login failures on the shared stack all come from 127.0.0.1 and count against one per-address
budget (20 per 15 min per api process). Keep the total below 15 across every test file:
    test_api_auth.py     wrong password (1) + unknown email (1) + per-email throttle (5) = 7
    test_api_secrets.py  one wrong password = 1   (total 8)
    test_api_errors.py none (the 401 checks there use tokens, not logins)
The per-address throttle test runs against a stack of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.servers import Stack

PASSWORD = "correct horse battery"

ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "service_unavailable",
}


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex}@example.com"


def signup(
    stack: Stack, email: str | None = None, password: str = PASSWORD, name: str = "Test User"
) -> tuple[str, str, str]:
    """A brand-new account: (access_token, refresh_token, email)."""
    email = email or unique_email()
    with stack.client() as client:
        response = client.post(
            "/auth/signup", json={"name": name, "email": email, "password": password}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["access_token"], body["refresh_token"], email


def user_client(stack: Stack) -> httpx.Client:
    """A client authenticated as a brand-new user."""
    token, _, _ = signup(stack)
    return stack.client(token)


def me(stack: Stack, token: str) -> dict[str, Any]:
    """GET /me as the token's user."""
    with stack.client(token) as client:
        response = client.get("/me")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, code: int, *mentions: str) -> str:
    """The seed's shape, exactly: {"error": {"code", "type", "message"}}; returns the message."""
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "type", "message"}, error
    assert error["code"] == code, error
    assert error["type"] == ERROR_TYPES[code], error
    message = error["message"]
    assert isinstance(message, str) and message.strip(), error
    for word in mentions:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def template_body(**fields: Any) -> dict[str, Any]:
    return {"name": f"tpl-{uuid.uuid4().hex[:8]}", "imageName": "busybox:latest", **fields}


def own_templates(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/templates")
    assert response.status_code == 200, response.text
    return [t for t in response.json() if not t["isPublic"]]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (for writes made outside the api)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
