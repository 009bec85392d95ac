"""What the tests of reaching instances (proxy, port mappings, SSH keys, logs) share: templates
for busybox servers, and raw HTTP for paths an HTTP client would tidy up."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.instance_helpers import RTX_4090, create_instance, terminate, wait_status

UP_S = 40.0
# busybox httpd on 8080 serving /www (index.html, a CGI that prints its environment and one that
# echoes the request body), and a
# TCP server on 2222 that answers "pong"; it prints a line first (for the logs tests).
HTTPD_COMMAND = (
    "echo hello-logs-$HOSTNAME"
    " && busybox mkdir -p /www/cgi-bin"
    " && echo hello-from-httpd > /www/index.html"
    " && busybox printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nbusybox env\\n'"
    " > /www/cgi-bin/env"
    " && busybox printf '#!/bin/sh\necho Content-Type: text/plain\necho\n"
    "busybox head -c $CONTENT_LENGTH\n' > /www/cgi-bin/echo"
    " && busybox chmod +x /www/cgi-bin/env /www/cgi-bin/echo"
    " && (busybox nc -ll -p 2222 -e busybox echo pong &)"
    " && exec busybox httpd -f -p 8080 -h /www"
)
HTTPD_PORTS = ["8080/http", "2222/tcp"]


def make_template(client: httpx.Client, image: str, command: str, ports: list[str]) -> str:
    response = client.post(
        "/templates",
        json={
            "name": f"reach-{uuid.uuid4().hex[:8]}",
            "imageName": image,
            "dockerStartCmd": command,
            "ports": ports,
            "containerDiskInGb": 5,
        },
    )
    assert response.status_code == 201, response.text
    template_id: str = response.json()["id"]
    return template_id


@contextmanager
def running_instance(
    client: httpx.Client, image: str, command: str, ports: list[str]
) -> Iterator[dict[str, Any]]:
    """A RUNNING instance of `image` running `command`, terminated afterwards."""
    template = make_template(client, image, command, ports)
    created = create_instance(client, templateId=template, gpuTypeId=RTX_4090)
    try:
        yield wait_status(client, created["id"], "RUNNING", UP_S)
    finally:
        terminate(client, created["id"], UP_S)


def raw_http(base_url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` exactly as written (no client normalising its path) and read the whole
    answer (the request must say `Connection: close`)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer
