"""A tiny Docker registry for tests, on 127.0.0.1 (Docker pulls from 127.0.0.0/8 over plain http).

It serves the pull half of the distribution API (`/v2/`, manifests and blobs, GET and HEAD) for
images taken from the local engine with `docker save`: each layer is gzipped and served as a
Docker schema 2 manifest (`application/vnd.docker.distribution.manifest.v2+json`) whose config is
the image's own config (so `rootfs.diff_ids` still name the uncompressed layers and the pulled
image has the same ID as the saved one). A repository may be private to some users: without their
HTTP Basic credential its manifests and blobs answer 401 with `WWW-Authenticate: Basic
realm="test"`, as `/v2/` itself does, which is how Docker learns to send credentials at all.
Every request is recorded (who asked for what, and the answer) for the tests to assert on."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class Repository:
    # Users (name -> password) who may pull; empty: anyone may.
    readers: dict[str, str] = field(default_factory=dict)
    # Tag or digest -> manifest bytes.
    manifests: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    user: str | None
    status: int


class TestRegistry:
    """Start with `start()`, stop with `stop()`; `address` is "127.0.0.1:PORT"."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self) -> None:
        self.repositories: dict[str, Repository] = {}
        self.blobs: dict[str, bytes] = {}
        # Every user any repository knows (name -> password): who /v2/ lets in.
        self.users: dict[str, str] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> TestRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def push(
        self,
        client: docker.DockerClient,
        source: str,
        repository: str,
        tag: str,
        readers: dict[str, str] | None = None,
    ) -> str:
        """Serve the local image `source` as `repository:tag`; the manifest's digest."""
        saved = b"".join(client.images.get(source).save())
        with tarfile.open(fileobj=io.BytesIO(saved)) as tar:

            def read(name: str) -> bytes:
                member = tar.extractfile(name)
                assert member is not None, name
                return member.read()

            (entry,) = json.loads(read("manifest.json"))
            config = read(entry["Config"])
            layers = [gzip.compress(read(path), mtime=0) for path in entry["Layers"]]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": _digest(config)},
                "layers": [
                    {"mediaType": LAYER_GZIP, "size": len(layer), "digest": _digest(layer)}
                    for layer in layers
                ],
            }
        ).encode()
        digest = _digest(manifest)
        with self._lock:
            for blob in (config, *layers):
                self.blobs[_digest(blob)] = blob
            repo = self.repositories.setdefault(repository, Repository())
            repo.readers.update(readers or {})
            self.users.update(readers or {})
            repo.manifests[tag] = manifest
            repo.manifests[digest] = manifest
        return digest

    def requests_by(self, user: str | None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.user == user]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                user = self._user()
                status, headers, body = self._answer(user)
                registry._record(Request(self.command, self.path, user, status))
                self.send_response(status)
                headers.setdefault("Content-Type", "application/json")
                headers["Content-Length"] = str(len(body))
                headers["Docker-Distribution-API-Version"] = "registry/2.0"
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def _user(self) -> str | None:
                """The user whose Basic credential is right, if any."""
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                try:
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return None
                with registry._lock:
                    known = registry.users.get(name)
                return name if known is not None and known == password else None

            def _answer(self, user: str | None) -> tuple[int, dict[str, str], bytes]:
                if self.path == "/v2/":
                    return (200, {}, b"{}") if user else _challenge("authentication required")
                match = _PATH.match(self.path)
                if match is None:
                    return _error(404, "NAME_UNKNOWN", "no such path")
                with registry._lock:
                    repo = registry.repositories.get(match["name"])
                    if repo is None:
                        return _error(404, "NAME_UNKNOWN", "repository name not known")
                    if repo.readers and user not in repo.readers:
                        return _challenge("authentication required")
                    if match["kind"] == "manifests":
                        manifest = repo.manifests.get(match["ref"])
                        if manifest is None:
                            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                        headers = {"Content-Type": MANIFEST_V2}
                        headers["Docker-Content-Digest"] = _digest(manifest)
                        return 200, headers, manifest
                    blob = registry.blobs.get(match["ref"])
                if blob is None:
                    return _error(404, "BLOB_UNKNOWN", "blob unknown")
                headers = {"Content-Type": "application/octet-stream"}
                headers["Docker-Content-Digest"] = match["ref"]
                return 200, headers, blob

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {}, json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _challenge(message: str) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = _error(401, "UNAUTHORIZED", message)
    headers["WWW-Authenticate"] = 'Basic realm="test"'
    return status, headers, body
