"""The console's cookies (its session and CSRF token) are the api's own, like `Authorization`: an
instance's code, which may be anyone's, never receives them through the proxy and can never set
them on the api's origin; its own cookies pass both ways. And a session cookie sent from another
origin (a page elsewhere opening a WebSocket to the proxy) counts for nothing."""

from __future__ import annotations

from services.api.authentication import same_origin
from services.api.instance_proxy.headers import downstream_headers, upstream_headers


def test_the_console_cookies_never_reach_an_instance() -> None:
    sent = [
        (b"host", b"127.0.0.1:8080"),
        (b"cookie", b"gpw_session=secret-refresh; theme=dark; gpw_csrf=tok"),
        (b"cookie", b"__Host-gpw_session=other"),
    ]
    kept = upstream_headers(sent, "127.0.0.1", "http", "/proxy/x/8888")
    cookies = [v for k, v in kept if k == b"cookie"]
    assert cookies == [b"theme=dark"], kept
    assert not any(b"secret-refresh" in v or b"gpw_" in v for _, v in kept), kept


def test_an_instance_cannot_set_the_console_cookies() -> None:
    answered = [
        (b"set-cookie", b"gpw_session=planted; Path=/"),
        (b"Set-Cookie", b"gpw_csrf=planted"),
        (b"set-cookie", b"theme=light; Path=/proxy/x"),
        (b"content-type", b"text/html"),
    ]
    passed = downstream_headers(answered)
    assert passed == [
        (b"set-cookie", b"theme=light; Path=/proxy/x"),
        (b"content-type", b"text/html"),
    ]


def _scope(origin: bytes | None) -> dict[str, object]:
    headers = [(b"host", b"127.0.0.1:8080")] + ([(b"origin", origin)] if origin else [])
    return {"scheme": "http", "headers": headers}


def test_only_the_apis_own_origin_counts() -> None:
    assert same_origin(_scope(None))
    assert same_origin(_scope(b"http://127.0.0.1:8080"))
    assert not same_origin(_scope(b"http://127.0.0.1:9999"))
    assert not same_origin(_scope(b"http://localhost:8080"))
    assert same_origin(_scope(b"https://console.example"), "https://console.example")
    assert not same_origin(_scope(b"null"))
