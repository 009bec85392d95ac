"""Which headers cross the proxy. Hop-by-hop headers belong to one connection and stop here (RFC
9110 §7.6.1). The caller's `Authorization` is ours (their GPUWorker token or API key) and is never
handed to the container, whose code may be anyone's; the forwarding headers are written by the
proxy alone, from what it saw, so a client cannot choose what the instance believes about it.
The console's cookies (its session and CSRF token) are ours in the same way: they are taken out
of the `Cookie` header, and the instance's other cookies pass."""

from __future__ import annotations

from collections.abc import Iterable

from services.api.browser_session import CONSOLE_COOKIES

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The proxy's own: consumed here, or written here.
OURS = frozenset(
    {
        b"authorization",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)
# Set by the WebSocket handshake itself, on each side.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"host",
        b"origin",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-key",
        b"sec-websocket-protocol",
        b"sec-websocket-version",
    }
)
Headers = list[tuple[bytes, bytes]]


def _named_in_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",") if t.strip()}
    return named


def headers_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers)


def _without_console_cookies(value: bytes) -> bytes:
    kept = [
        pair.strip()
        for pair in value.split(b";")
        if pair.strip() and pair.partition(b"=")[0].strip().decode("latin-1") not in CONSOLE_COOKIES
    ]
    return b"; ".join(kept)


def upstream_headers(
    headers: Headers,
    client: str | None,
    scheme: str,
    prefix: str,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """The request's headers as the instance gets them: end-to-end ones as sent (Host too, so
    the app sees the name it was reached by), and the proxy's own forwarding headers."""
    skip = HOP_BY_HOP | OURS | drop | _named_in_connection(headers)
    kept = [(k.lower(), v) for k, v in headers if k.lower() not in skip]
    kept = [
        (k, _without_console_cookies(v)) if k == b"cookie" else (k, v)
        for k, v in kept
        if k != b"cookie" or _without_console_cookies(v)
    ]
    host = next((v for k, v in headers if k.lower() == b"host"), b"")
    kept.append((b"x-forwarded-proto", scheme.encode()))
    if client:
        kept.append((b"x-forwarded-for", client.encode()))
    if host:
        kept.append((b"x-forwarded-host", host))
    if prefix:
        kept.append((b"x-forwarded-prefix", prefix.encode()))
    return kept


def downstream_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The instance's response headers as the client gets them: end-to-end ones only, and no
    `Set-Cookie` of the console's own cookies (on the api's origin it would replace the
    browser's session or CSRF token)."""
    listed = list(headers)
    skip = HOP_BY_HOP | _named_in_connection(listed)
    return [
        (k.lower(), v)
        for k, v in listed
        if k.lower() not in skip and not (k.lower() == b"set-cookie" and _sets_console_cookie(v))
    ]


def _sets_console_cookie(value: bytes) -> bool:
    name = value.partition(b"=")[0].strip().decode("latin-1")
    return name in CONSOLE_COOKIES
