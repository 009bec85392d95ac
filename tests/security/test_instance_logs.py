"""GET /instances/{id}/logs on real Docker: what the container printed, from the agent of its host
over NATS (the api never touches Docker); `follow` streams lines printed after the request began,
and ends on the server when the client goes away (the per-user limit on followed streams frees its
slot). Only the owner: another user gets 404."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import docker
import httpx
import pytest

from services.container_logs import MAX_TAIL
from tests.api_helpers import assert_error, signup, wait_for
from tests.docker_fixtures import docker_client  # noqa: F401
from tests.security.conftest import LOG_STREAMS_PER_USER, SecurityStack
from tests.security.reach_helpers import HTTPD_COMMAND, HTTPD_PORTS, running_instance


@pytest.fixture(scope="module")
def owned(security_stack: SecurityStack) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    with (
        security_stack.tenant() as client,
        running_instance(client, "local/busybox:latest", HTTPD_COMMAND, HTTPD_PORTS) as running,
    ):
        yield client, running


def _say(client: docker.DockerClient, instance_id: str, text: str) -> None:
    container = client.containers.get(f"gpuworker-{instance_id}")
    code, output = container.exec_run(["sh", "-c", f"echo {text} > /proc/1/fd/1"])
    assert code == 0, output


def test_the_owner_reads_what_the_container_printed(
    owned: tuple[httpx.Client, dict[str, Any]],
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    client, running = owned
    path = f"/instances/{running['id']}/logs"
    body = wait_for(
        lambda: (r := client.get(path)).status_code == 200 and "hello-logs-" in r.text and r,
        20,
        "the start command's line in the logs",
    )
    assert body.headers["content-type"].startswith("text/plain")
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    _say(docker_client, running["id"], f"{marker}-1")
    _say(docker_client, running["id"], f"{marker}-2")

    assert client.get(path, params={"tail": 2}).text == f"{marker}-1\n{marker}-2\n"
    assert client.get(path, params={"tail": 1}).text == f"{marker}-2\n"
    stamped = client.get(path, params={"tail": 1, "timestamps": "true"}).text
    assert stamped.endswith(f" {marker}-2\n") and stamped[:4].isdigit() and "T" in stamped
    later = client.get(path, params={"since": "2999-01-01T00:00:00Z"})
    assert later.status_code == 200 and later.text == ""
    assert_error(client.get(path, params={"tail": MAX_TAIL + 1}), 400, "tail")


def test_follow_streams_a_line_printed_after_the_request_began(
    owned: tuple[httpx.Client, dict[str, Any]],
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    client, running = owned
    marker = f"later-{uuid.uuid4().hex[:8]}"
    with client.stream(
        "GET", f"/instances/{running['id']}/logs", params={"follow": "true", "tail": 0}
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        time.sleep(0.5)
        _say(docker_client, running["id"], marker)
        deadline = time.monotonic() + 15
        seen = []
        for line in lines:
            seen.append(line)
            if line == marker or time.monotonic() > deadline:
                break
        assert seen[-1] == marker, seen


def test_followed_streams_per_user_are_limited_and_freed_when_the_client_leaves(
    security_stack: SecurityStack, owned: tuple[httpx.Client, dict[str, Any]]
) -> None:
    client, running = owned
    path = f"{security_stack.stack.url}/instances/{running['id']}/logs?follow=true&tail=0"
    headers = dict(client.headers)
    with ExitStack() as streams:
        for _ in range(LOG_STREAMS_PER_USER):
            held = streams.enter_context(httpx.stream("GET", path, headers=headers, timeout=30))
            assert held.status_code == 200
        assert_error(client.get(path), 429, "followed log streams")
    # The clients went away: the server lets their slots go.
    wait_for(
        lambda: _opened(path, headers),
        15,
        "a followed stream once the others were closed",
    )


def _opened(path: str, headers: dict[str, str]) -> bool:
    with httpx.stream("GET", path, headers=headers, timeout=30) as response:
        return response.status_code == 200


def test_anyone_else_is_told_the_instance_does_not_exist(
    security_stack: SecurityStack, owned: tuple[httpx.Client, dict[str, Any]]
) -> None:
    _, running = owned
    path = f"/instances/{running['id']}/logs"
    other, _, _ = signup(security_stack.stack)
    with security_stack.stack.client(other) as stranger:
        assert_error(stranger.get(path), 404, "instance not found")
        assert_error(stranger.get(path, params={"follow": "true"}), 404, "instance not found")
    with security_stack.stack.client() as anonymous:
        assert_error(anonymous.get(path), 401)
