"""The proxy's limits and options, from the api's environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

MIB = 1024 * 1024


class ProxyDomain(msgspec.Struct, frozen=True, kw_only=True):
    """`GPUWORKER_PROXY_DOMAIN`: instances' ports are also served at `<id>-<N>.<host>` (a
    wildcard DNS name and certificate point at the api), shown as `<scheme>://<id>-<N>.<host>/`.
    `proxy.example.com` means https; `http://localhost:8080` suits `gpuworker up` (browsers
    send *.localhost to loopback)."""

    scheme: str
    # Lowercase host name, and ":port" when the URLs carry one.
    host: str
    port_suffix: str = ""

    @classmethod
    def parse(cls, text: str) -> ProxyDomain:
        parts = urlsplit(text if "://" in text else f"https://{text}")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ValueError(
                f"GPUWORKER_PROXY_DOMAIN is a host name such as proxy.example.com (or"
                f" http://localhost:8080), not {text!r}"
            )
        return cls(
            scheme=parts.scheme,
            host=parts.hostname.lower(),
            port_suffix=f":{parts.port}" if parts.port else "",
        )


class ProxySettings(msgspec.Struct, frozen=True, kw_only=True):
    # A request body larger than this is refused (413).
    max_body_bytes: int = 100 * MIB
    # Request headers, all together (431 beyond; uvicorn refuses far larger ones itself).
    max_header_bytes: int = 64 * 1024
    # Nothing moved either way for this long: the upstream read (HTTP) or the WebSocket ends.
    idle_timeout_s: float = 300.0
    connect_timeout_s: float = 5.0
    # One WebSocket message, at most.
    max_message_bytes: int = 16 * MIB
    domain: ProxyDomain | None = None
    # GPUWORKER_PUBLIC_URL: the api's address as customers reach it, for the URLs instances
    # show (None: the address each request came to).
    public_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProxySettings:
        default = cls()
        domain = env.get("GPUWORKER_PROXY_DOMAIN")
        settings = cls(
            max_body_bytes=int(
                float(env.get("GPUWORKER_PROXY_MAX_BODY_MB", default.max_body_bytes / MIB)) * MIB
            ),
            idle_timeout_s=float(env.get("GPUWORKER_PROXY_IDLE_TIMEOUT", default.idle_timeout_s)),
            domain=ProxyDomain.parse(domain) if domain else None,
            public_url=(env.get("GPUWORKER_PUBLIC_URL") or "").rstrip("/") or None,
        )
        if settings.max_body_bytes < 0 or settings.idle_timeout_s <= 0:
            raise ValueError(
                "GPUWORKER_PROXY_MAX_BODY_MB must be >= 0 and GPUWORKER_PROXY_IDLE_TIMEOUT > 0"
            )
        return settings
