"""Which headers cross the proxy. Hop-by-hop headers belong to one connection and stop here (RFC
9110 §7.6.1). The caller's `Authorization` is ours (their GPUWorker token or API key) and is never
handed to the container, whose code may be anyone's; the forwarding headers are written by the
proxy alone, from what it saw, so a client cannot choose what the instance believes about it."""

from __future__ import annotations

from collections.abc import Iterable

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
    """The instance's response headers as the client gets them: end-to-end ones only."""
    listed = list(headers)
    skip = HOP_BY_HOP | _named_in_connection(listed)
    return [(k.lower(), v) for k, v in listed if k.lower() not in skip]
