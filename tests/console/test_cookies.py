"""The console's cookies over https: Secure (and `__Host-` when the api itself speaks https), also
when a TLS-terminating proxy hands the api plain http; HttpOnly and SameSite=Lax always."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.api.auth import TokensOut
from services.api.browser_session import cookie_name, served_over_https
from services.console.guards import csrf_config
from services.console.pages.sign_in import _signed_in


def _session_cookie(scheme: str) -> Any:
    request: Any = SimpleNamespace(url=SimpleNamespace(scheme=scheme))
    tokens = TokensOut(access_token="a", refresh_token="r", token_type="bearer", expires_in=900)
    (cookie,) = _signed_in(request, tokens, "/console/").cookies
    return cookie


@pytest.mark.parametrize(
    ("public_url", "scheme", "name", "secure"),
    [
        ("", "http", "gpw_session", False),
        ("https://gpu.example.com", "http", "gpw_session", True),
        ("https://gpu.example.com", "https", "__Host-gpw_session", True),
    ],
)
def test_the_session_cookie(
    monkeypatch: pytest.MonkeyPatch, public_url: str, scheme: str, name: str, secure: bool
) -> None:
    monkeypatch.setenv("GPUWORKER_PUBLIC_URL", public_url)
    assert served_over_https() is bool(public_url)
    cookie = _session_cookie(scheme)
    assert (cookie.key, cookie.secure) == (name, secure)
    assert cookie.key == cookie_name(scheme)
    assert cookie.httponly and cookie.samesite == "lax" and cookie.path == "/"
    assert cookie.domain is None  # never a parent domain: instances' subdomains must not get it


def test_the_csrf_cookie() -> None:
    for https in (False, True):
        config = csrf_config("secret", https)
        assert config.cookie_secure is https
        assert config.cookie_httponly and config.cookie_samesite == "lax"
