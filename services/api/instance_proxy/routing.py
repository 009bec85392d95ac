"""Which instance and port a proxied request names, and the URLs an instance's HTTP ports have.

The upstream is never named by the request: a path gives an instance id and a port number, and
`targets` alone turns those into an address (the one the instance's host reported for that
declared port). What follows the port in the path is passed on as the path on that same port,
however it is written (`..`, `//host`, percent-escapes): it cannot reach another port or host.
Pure functions."""

from __future__ import annotations

import re
from typing import NamedTuple

from events.subjects import ID_PATTERN
from services.api.instance_proxy.settings import ProxyDomain

PROXY_PREFIX = "/proxy"
_ID = re.compile(ID_PATTERN)
_PORT = re.compile(r"[1-9][0-9]{0,4}")


class ProxyRoute(NamedTuple):
    instance_id: str
    port: int
    # The request target to send upstream: the rest of the path (starting with "/") as the
    # client wrote it, and the query.
    path: bytes
    # Where this port's root is, as the client sees it ("/proxy/<id>/<N>", or "" on its own
    # host name): an app behind the proxy needs it for its links (X-Forwarded-Prefix).
    prefix: str


def _port(text: str) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    number = int(text)
    return number if number <= 65535 else None


def is_proxy_path(path: str) -> bool:
    return path == PROXY_PREFIX or path.startswith(PROXY_PREFIX + "/")


def route_of_path(raw_path: bytes, query: bytes) -> ProxyRoute | None:
    """`/proxy/<id>/<N>/<rest>` -> the route; None when the path names no instance port. A path
    that ends at the port (no "/" after it) has `path` b"" (the caller redirects to the "/")."""
    text = raw_path.decode("latin-1")
    if not text.startswith(PROXY_PREFIX + "/"):
        return None
    parts = text[len(PROXY_PREFIX) + 1 :].split("/", 2)
    if len(parts) < 2 or not _ID.fullmatch(parts[0]):
        return None
    port = _port(parts[1])
    if port is None:
        return None
    prefix = f"{PROXY_PREFIX}/{parts[0]}/{parts[1]}"
    if len(parts) == 2:
        return ProxyRoute(parts[0], port, b"", prefix)
    rest = b"/" + parts[2].encode("latin-1")
    return ProxyRoute(parts[0], port, rest + (b"?" + query if query else b""), prefix)


def route_of_host(
    host_header: str, domain: ProxyDomain, raw_path: bytes, query: bytes
) -> ProxyRoute | None:
    """`<id>-<N>.<domain>` (any port after it) -> the route; None for any other host."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never an instance's name
        return None
    name = host.rpartition(":")[0] if ":" in host else host
    label, dot, parent = name.partition(".")
    if not dot or parent != domain.host:
        return None
    instance_id, dash, port_text = label.rpartition("-")
    port = _port(port_text)
    if not dash or port is None or not _ID.fullmatch(instance_id):
        return None
    path = raw_path or b"/"
    return ProxyRoute(instance_id, port, path + (b"?" + query if query else b""), "")


def proxy_urls(
    instance_id: str, http_ports: list[int], base_url: str, domain: ProxyDomain | None
) -> list[str]:
    """Each HTTP port's address: through the api's path, and on its own host name if the
    operator set a wildcard domain."""
    base = base_url.rstrip("/")
    urls = [f"{base}{PROXY_PREFIX}/{instance_id}/{port}/" for port in http_ports]
    if domain is not None:
        urls += [
            f"{domain.scheme}://{instance_id}-{port}.{domain.host}{domain.port_suffix}/"
            for port in http_ports
        ]
    return urls
