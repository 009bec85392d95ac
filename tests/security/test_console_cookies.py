"""The console's cookies (its session and CSRF token) are the api's own, like `Authorization`: an
instance's code, which may be anyone's, never receives them through the proxy and can never set
them on the api's origin; its own cookies pass both ways. And a session cookie sent from another
origin counts for nothing on a console form; and on the instance proxy no cookie counts at all."""

from __future__ import annotations

from services.api.instance_proxy.headers import downstream_headers, upstream_headers
from services.console.guards import same_origin
from tests.api_helpers import assert_error, signup
from tests.instance_helpers import BUSYBOX_TEMPLATE, create_instance, terminate, wait_status
from tests.servers import Stack


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


def test_a_console_session_does_not_open_an_instances_proxy(stack: Stack) -> None:
    """`/proxy/<id>/<N>/` shares the api's origin: a page an instance serves there runs as the
    console's own. Were the session cookie enough to get through, a browser would open it, and
    the instance's script (anyone's code) could then drive the console as its owner. Only a
    bearer credential opens it, as before the console."""
    token, refresh, _ = signup(stack)
    with stack.client(token) as client:
        created = create_instance(client, templateId=BUSYBOX_TEMPLATE, ports=["8888/http"])
        try:
            wait_status(client, created["id"], "RUNNING")
            path = f"/proxy/{created['id']}/8888/"
            with_bearer = client.get(path)
            assert with_bearer.status_code != 404, with_bearer.text
            with stack.client() as browser:
                browser.cookies.set("gpw_session", refresh)
                cookie_only = browser.get(path, headers={"origin": stack.url})
            assert_error(cookie_only, 404)
        finally:
            terminate(client, created["id"])
