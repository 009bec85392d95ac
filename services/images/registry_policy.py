"""Which registries a customer's image name may make the host's Docker daemon contact.

The daemon pulls from wherever an image name points, from inside our network: left alone, a name
like `<internal address>:<port>/x` turns every GPU host into a port scanner for its customers. So
a registry whose host is an address on a loopback, private, link-local, unique-local, shared
(CGNAT), multicast, reserved or unspecified range, IPv4 or IPv6 (including IPv4 written the
short ways `inet_aton` accepts, like `127.1` or `2130706433`, and IPv4-mapped IPv6), or a name of
this machine (`localhost`, `*.localhost`), is refused, unless the operator allows that registry by
name in `GPUWORKER_ALLOWED_REGISTRIES` ("host[:port]" entries, comma-separated; an exact match,
port included). A name that is not an address passes here and is checked again by the agent just
before the pull, against what it resolves to then (`check_resolved`), which closes DNS rebinding
as far as anything outside the daemon can: the daemon resolves the name again itself, so a
network policy for the daemon's egress remains the operator's last line (see README, Security).

Pure: no I/O (`check_resolved` takes the addresses the caller resolved)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.images.reference import ImageReference

ALLOWED_REGISTRIES_ENV = "GPUWORKER_ALLOWED_REGISTRIES"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")


class RegistryRefused(ValueError):
    """The image names a registry this platform does not contact; the message says why."""


def refused_address(address: Address) -> str | None:
    """Why a registry at `address` is refused, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            return refused_address(embedded)
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("shared (carrier-grade NAT)", address in _SHARED_ADDRESS_SPACE),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    if not address.is_global:
        return "not a public address"
    return None


def address_literal(host: str) -> Address | None:
    """The address `host` spells, however the resolver would read it, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # The resolver takes "127.1", "0x7f.1", "2130706433" as IPv4 addresses, and so must we.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


@dataclass(frozen=True)
class RegistryPolicy:
    # "host[:port]", lower case: registries the operator lets images name whatever their address.
    allowed: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls) -> RegistryPolicy:
        raw = os.environ.get(ALLOWED_REGISTRIES_ENV, "")
        return cls(frozenset(e.strip().lower() for e in raw.split(",") if e.strip()))

    def is_allowed_by_name(self, reference: ImageReference) -> bool:
        return reference.domain.lower() in self.allowed

    def check(self, reference: ImageReference) -> None:
        """Raises RegistryRefused for a registry on a local or private address or name."""
        if self.is_allowed_by_name(reference):
            return
        host = reference.host
        if _is_local_name(host):
            raise self._refused(reference, "a name of this machine")
        address = address_literal(host)
        if address is not None and (why := refused_address(address)) is not None:
            raise self._refused(reference, why)

    def check_resolved(self, reference: ImageReference, addresses: Iterable[str]) -> None:
        """Raises RegistryRefused if the registry's name resolved to any refused address."""
        if self.is_allowed_by_name(reference):
            return
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if (why := refused_address(address)) is not None:
                raise self._refused(reference, f"it resolves to {why}")

    @staticmethod
    def _refused(reference: ImageReference, why: str) -> RegistryRefused:
        return RegistryRefused(
            f"registry {reference.domain} is not allowed ({why}): use a public registry, or ask "
            "the operator to allow this one"
        )
