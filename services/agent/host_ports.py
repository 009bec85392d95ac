"""Which host port each published container port gets, chosen by the agent instead of Docker.

Docker gives a port published without a host port ("127.0.0.1::8888") a new random host port at
every start, so an instance's SSH address would change with each stop and start. The runtime
chooses a fixed host port instead, recorded in the container's port bindings (kept by Docker
across stop and start) and asked for again when the container is made anew (a changed image,
new keys), from the instance's last published ports. A port is free when no container on the
engine has it reserved (`LABEL_PORTS`, written on each container we create, since a stopped
container's bindings are invisible in `docker ps`) and it can be bound right now.

The default range, 20000-29999, lies below Linux's ephemeral range (32768-60999), so outgoing
connections never hold the ports it hands out."""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Callable, Iterable, Mapping

from services.agent.runtime import HostPort

# On every container the runtime creates: "8888/tcp=20001,22/tcp=20002".
LABEL_PORTS = "gpuworker.ports"
DEFAULT_HOST_PORTS = (20000, 29999)


class NoFreeHostPort(RuntimeError):
    pass


def parse_range(text: str) -> tuple[int, int]:
    """ "20000-29999" -> (20000, 29999); raises ValueError for anything else."""
    low, sep, high = text.partition("-")
    first, last = int(low), int(high or low)
    if not sep or not 1024 <= first <= last <= 65535:
        raise ValueError(f"a host port range is LOW-HIGH within 1024-65535, not {text!r}")
    return first, last


def ports_label(ports: Mapping[str, HostPort]) -> str:
    return ",".join(
        f"{key}={port.host_port}" for key, port in sorted(ports.items()) if port.host_port
    )


def reserved_in(labels: Iterable[Mapping[str, str]]) -> set[int]:
    """The host ports the containers with these labels hold (anything unreadable is skipped)."""
    held: set[int] = set()
    for each in labels:
        for item in (each.get(LABEL_PORTS) or "").split(","):
            _, _, number = item.partition("=")
            if number.isdigit():
                held.add(int(number))
    return held


def can_bind(host_ip: str, port: int, protocol: str) -> bool:
    """Whether `host_ip:port` is free for `protocol` on this machine right now."""
    family = socket.AF_INET6 if ipaddress.ip_address(host_ip).version == 6 else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as probe:
        try:
            probe.bind((host_ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NoFreeHostPort(
                    f"{host_ip} is not an address of this host: check GPUWORKER_PUBLIC_IP,"
                    " GPUWORKER_PUBLIC_BIND_IP and GPUWORKER_PRIVATE_IP"
                ) from None
            return False
    return True


def choose_host_ports(
    wanted: Mapping[str, HostPort],
    reserved: set[int],
    port_range: tuple[int, int] = DEFAULT_HOST_PORTS,
    bindable: Callable[[str, int, str], bool] = can_bind,
    rng: random.Random | None = None,
) -> dict[str, HostPort]:
    """A host port for each Docker port key in `wanted` ("22/tcp" -> where it should go): the
    one asked for when it is free, else a free one of `port_range`. Raises NoFreeHostPort."""
    taken = set(reserved)
    chosen: dict[str, HostPort] = {}
    first, last = port_range
    pick = rng or random.SystemRandom()
    for key, want in sorted(wanted.items()):
        protocol = key.rpartition("/")[2]
        port = want.host_port
        if not (port and port not in taken and bindable(want.host_ip, port, protocol)):
            port = 0
            # From a random point, so two agents on one engine rarely try the same port.
            start = pick.randrange(first, last + 1)
            for offset in range(last - first + 1):
                candidate = first + (start - first + offset) % (last - first + 1)
                if candidate not in taken and bindable(want.host_ip, candidate, protocol):
                    port = candidate
                    break
            if not port:
                raise NoFreeHostPort(f"no free host port in {first}-{last} for {key}")
        taken.add(port)
        chosen[key] = HostPort(host_ip=want.host_ip, host_port=port)
    return chosen
