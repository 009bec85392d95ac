"""Where a job's webhook may be sent: a customer's URL that the platform POSTs to from inside its
own network, so the same rule as for registries (services/images/registry_policy.py): an http(s)
URL whose host is not a loopback, private, link-local, shared, multicast, reserved or unspecified
address, nor a name of this machine, checked when the job is submitted (the URL as written) and
again just before each delivery (what the name resolves to then). An operator may allow hosts
("host" or "host:port") in GPUWORKER_WEBHOOK_ALLOWED_HOSTS, e.g. a receiver on loopback in tests.

Pure: no I/O (`check_resolved` takes the addresses the caller resolved)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from services.images.registry_policy import address_literal, refused_address

MAX_URL_LENGTH = 2048


class WebhookRefused(ValueError):
    pass


def _allowed(parts: SplitResult, allowed: Iterable[str]) -> bool:
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    names = set(allowed)
    return host in names or f"{host}:{port}" in names


def check_url(url: str, allowed: Iterable[str] = ()) -> SplitResult:
    """The URL's parts, or WebhookRefused saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise WebhookRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookRefused("no user or password in the URL")
    if _allowed(parts, allowed):
        return parts
    host = parts.hostname.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise WebhookRefused(f"{host} is a name of this machine; use a public address")
    address = address_literal(host)
    if address is not None and (why := refused_address(address)) is not None:
        raise WebhookRefused(f"{host} is {why}; use a public address")
    return parts


def check_resolved(parts: SplitResult, addresses: Iterable[str], allowed: Iterable[str]) -> None:
    if _allowed(parts, allowed):
        return
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if (why := refused_address(address)) is not None:
            raise WebhookRefused(f"{parts.hostname} resolves to {why}")
