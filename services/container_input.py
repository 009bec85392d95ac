"""What a customer may ask of a container's mounts and ports, checked twice: by the API (400 naming
the field) and again by the runtime just before it builds the container, since an event written
before a rule existed, or by a buggy writer, can still hold a value Docker refuses (a refused create
used to send the agent into a hot loop). One set of rules for both, so they cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_MOUNT_PATH_LENGTH = 256
MAX_PORTS = 32
PORT_PROTOCOLS = ("http", "tcp", "udp")

# Mounting a volume over these hides or replaces what the container's own system needs (and over
# /proc, /sys or /dev is a known route out of a container), so no customer path may be or lie
# under one of them.
SYSTEM_PATHS = (
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/run",
    "/var/run",
)

# Each segment: printable, no whitespace, no ':' (Docker's volume-spec separator), no '/'.
_SEGMENT = re.compile(r"[^\s:/\x00-\x1f\x7f]+")
_PORT = re.compile(r"([1-9][0-9]{0,4})/([a-z]+)")


def mount_path_problem(path: str) -> str | None:
    """Why `path` cannot be a volume mount path, or None if it can."""
    if not path.startswith("/"):
        return f"{path!r} must be an absolute path such as /workspace"
    if len(path) > MAX_MOUNT_PATH_LENGTH:
        return f"must be at most {MAX_MOUNT_PATH_LENGTH} characters"
    if path == "/":
        return "cannot be / (the container's root)"
    segments = path[1:].split("/")
    for segment in segments:
        if segment == "":
            return f"{path!r} must be normalised: no '//' and no trailing '/'"
        if segment in (".", ".."):
            return f"{path!r} must be normalised: no '.' or '..' segments"
        if not _SEGMENT.fullmatch(segment):
            return f"{path!r} may not contain ':', whitespace or control characters"
    for system in SYSTEM_PATHS:
        if path == system or path.startswith(system + "/"):
            return f"{path!r} is under the system path {system}; use e.g. /workspace or /data"
    return None


def port_key(port: str) -> tuple[int, str] | None:
    """ "8888/http" -> (8888, "tcp"), the port Docker exposes (HTTP rides on TCP); None if bad."""
    match = _PORT.fullmatch(port)
    if match is None or match.group(2) not in PORT_PROTOCOLS:
        return None
    number = int(match.group(1))
    if not 1 <= number <= 65535:
        return None
    return number, "udp" if match.group(2) == "udp" else "tcp"


def ports_problem(ports: Sequence[str]) -> str | None:
    """Why `ports` cannot be a container's exposed ports, or None if they can."""
    if len(ports) > MAX_PORTS:
        return f"at most {MAX_PORTS} ports"
    seen: dict[tuple[int, str], str] = {}
    for port in ports:
        key = port_key(port)
        if key is None:
            return (
                f"invalid port {port!r}: expected NUMBER/PROTOCOL with NUMBER 1-65535 and"
                f" PROTOCOL one of {', '.join(PORT_PROTOCOLS)}, e.g. '8888/http' or '22/tcp'"
            )
        if key in seen:
            return f"{port!r} repeats {seen[key]!r} (both are {key[0]}/{key[1]})"
        seen[key] = port
    return None
