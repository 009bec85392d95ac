"""Finding 3 (issue 7), at the runtime: an image name must not make the host's Docker daemon
contact a registry on a local or private address (unless the operator allowed it by name), and what
the daemon says when a pull fails never reaches the customer, only a reason they can act on.

Everything here listens and is contacted on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest

from services.agent.docker_runtime import DockerRuntime
from services.agent.image_access import ImageAccess, ImagePolicy
from services.agent.runtime import ContainerSpec, ImagePullFailed
from tests.docker_fixtures import docker_client  # noqa: F401

SECRET_WORDS = f"PROBE-{uuid.uuid4().hex}"


class CountingListener:
    """A TCP port on 127.0.0.1 that counts who connects (and closes at once)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.port = int(self.socket.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.socket.close()


class _Chatty(BaseHTTPRequestHandler):
    """A registry that answers with words of its own: /v2/ is fine, every manifest unknown
    (with a message), everything under /broken/ a 500 with a body."""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._send(200, {})
        elif self.path.startswith("/v2/broken/"):
            self._send(500, {"detail": SECRET_WORDS})
        else:
            code = "MANIFEST_UNKNOWN"
            self._send(404, {"errors": [{"code": code, "message": SECRET_WORDS}]})

    do_HEAD = do_GET

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    made = CountingListener()
    yield made
    made.close()


@pytest.fixture
def chatty_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chatty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def runtime(
    docker_client: docker.DockerClient,  # noqa: F811
) -> AsyncIterator[DockerRuntime]:
    made = DockerRuntime(f"t-ssrf-{uuid.uuid4().hex[:8]}", docker_client, pull_timeout_s=30)
    yield made
    await made.close()


def _spec(image: str) -> ContainerSpec:
    return ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}", image=image, command="sleep 60", owner_id="u"
    )


async def test_a_loopback_registry_is_never_contacted(
    runtime: DockerRuntime, listener: CountingListener
) -> None:
    for image in (
        f"127.0.0.1:{listener.port}/probe:1",
        f"localhost:{listener.port}/probe:1",
        f"127.1:{listener.port}/probe:1",
    ):
        with pytest.raises(ImagePullFailed) as failure:
            await runtime.create_and_start(_spec(image))
        assert "not allowed" in str(failure.value), failure.value
    await asyncio.sleep(0.3)
    assert listener.connections == 0, "the daemon contacted the refused registry"


async def test_an_allowed_registry_is_contacted(
    runtime: DockerRuntime, listener: CountingListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same name, allowed by the operator: now the daemon may go there (and fails)."""
    monkeypatch.setenv("GPUWORKER_ALLOWED_REGISTRIES", f"127.0.0.1:{listener.port}")
    allowed = DockerRuntime(runtime.host_id, pull_timeout_s=30)
    try:
        with pytest.raises(ImagePullFailed) as failure:
            await allowed.create_and_start(_spec(f"127.0.0.1:{listener.port}/probe:1"))
    finally:
        await allowed.close()
    assert listener.connections > 0
    assert "registry not reachable" in str(failure.value)


@pytest.mark.parametrize(
    ("repository", "reason"),
    [
        ("team/app", "image not found or access denied"),
        ("broken/app", "could not be used"),
    ],
)
async def test_the_daemons_words_never_reach_the_customer(
    chatty_registry: str, monkeypatch: pytest.MonkeyPatch, repository: str, reason: str
) -> None:
    monkeypatch.setenv("GPUWORKER_ALLOWED_REGISTRIES", chatty_registry)
    runtime = DockerRuntime(f"t-ssrf-{uuid.uuid4().hex[:8]}", pull_timeout_s=30)
    image = f"{chatty_registry}/{repository}:1"
    try:
        with pytest.raises(ImagePullFailed) as failure:
            await runtime.create_and_start(_spec(image))
    finally:
        await runtime.close()
    message = str(failure.value)
    assert reason in message, message
    assert image in message
    for raw in (SECRET_WORDS, "manifest unknown", "500", "Internal Server Error", "http"):
        assert raw not in message, f"{raw!r} in {message!r}"


async def test_a_name_resolving_to_a_local_address_is_refused_before_the_pull() -> None:
    """DNS rebinding: a public-looking name that resolves to a local address when the agent is
    about to pull. The resolver is the one stand-in here (no DNS server is reachable from tests);
    the check runs before Docker is asked anything, so nothing is contacted."""
    answers = {"registry.example.com": ["127.0.0.1"], "public.example.com": ["93.184.216.34"]}
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[host]

    access = ImageAccess(ImagePolicy(), resolve=resolve)
    image = "registry.example.com:5000/team/app:1"
    ref = access.reference(image)  # a name passes the static check
    with pytest.raises(ImagePullFailed) as failure:
        await access.check_resolution(image, ref)
    assert "resolves to a loopback address" in str(failure.value)
    assert asked == [("registry.example.com", 5000)]

    public = "public.example.com/team/app:1"
    await access.check_resolution(public, access.reference(public))
    assert asked[-1] == ("public.example.com", 443)

    async def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(ImagePullFailed, match="registry not reachable"):
        await ImageAccess(ImagePolicy(), resolve=unresolvable).check_resolution(public, ref)
