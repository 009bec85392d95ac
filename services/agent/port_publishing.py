"""Where a host publishes its instances' ports, and how it reports them.

Two addresses, because the two kinds of port are reached by different people:

- `N/tcp` and `N/udp` ports are the customer's own (SSH, a database): published on the host's
  public side (`GPUWORKER_PUBLIC_BIND_IP`, default `GPUWORKER_PUBLIC_IP`) and shown as
  `publicIp` + `portMappings`. Behind NAT the two differ: bind on the host's own address,
  advertise the public one.
- `N/http` ports are reached only through the api's proxy, which checks who asks: published on
  `GPUWORKER_PRIVATE_IP`, the address the api reaches the host on, never the public one (a
  public http port would bypass the proxy's owner check).

All default to 127.0.0.1, which is right for `gpuworker up` (api and agent on one machine)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

import msgspec

from events.instance import PublishedPort
from services.agent.runtime import ContainerState, HostPort
from services.container_input import port_key

LOOPBACK = "127.0.0.1"


def _address(name: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{name} must be an IP address, not {value!r}") from None


def _docker_key(port: str) -> str | None:
    key = port_key(port)
    return f"{key[0]}/{key[1]}" if key else None


class HostAddresses(msgspec.Struct, frozen=True, kw_only=True):
    public_ip: str = LOOPBACK
    public_bind_ip: str = LOOPBACK
    private_ip: str = LOOPBACK

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> HostAddresses:
        public = _address("GPUWORKER_PUBLIC_IP", env.get("GPUWORKER_PUBLIC_IP") or LOOPBACK)
        return cls(
            public_ip=public,
            public_bind_ip=_address(
                "GPUWORKER_PUBLIC_BIND_IP", env.get("GPUWORKER_PUBLIC_BIND_IP") or public
            ),
            private_ip=_address(
                "GPUWORKER_PRIVATE_IP", env.get("GPUWORKER_PRIVATE_IP") or LOOPBACK
            ),
        )

    def bind_ip(self, port: str) -> str:
        return self.private_ip if port.endswith("/http") else self.public_bind_ip

    def publish(self, ports: list[str], previous: list[PublishedPort]) -> dict[str, HostPort]:
        """Where each declared port goes: its address by kind, and the host port it had last
        (asked for again, so an address survives a new container where the host allows)."""
        before = {p.port: p for p in previous}
        wanted: dict[str, HostPort] = {}
        for port in ports:
            ip = self.bind_ip(port)
            last = before.get(port)
            wanted[port] = HostPort(
                host_ip=ip, host_port=last.host_port if last and last.host_ip == ip else 0
            )
        return wanted

    def published(self, ports: list[str], actual: ContainerState) -> list[PublishedPort]:
        """The declared ports as the container has them published, sorted by port."""
        found = []
        for port in ports:
            key = _docker_key(port)
            host = actual.ports.get(key) if key else None
            if host is not None and host.host_port:
                found.append(
                    PublishedPort(port=port, host_ip=host.host_ip, host_port=host.host_port)
                )
        return sorted(found, key=lambda p: p.port)
