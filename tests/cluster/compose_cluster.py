"""compose.yaml run for real, with the images deploy/build-images makes: PostgreSQL, three NATS
nodes and every role in containers of their own, under a compose project of its own with fresh
secrets, the api and the NATS nodes published on loopback at free ports."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.api import StreamInfo

from services.cli.embedded import free_port
from services.nats_connection import nats_servers
from services.nats_credentials import new_password
from services.nats_permissions import ROLE_USERS, agent_user, password_variable
from services.security.host_keys import host_key

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("compose.yaml", "deploy/compose.local.yaml")
HOSTS = ("host-1", "host-2")
NODES = ("n1", "n2", "n3")
# What a new account is given, so the careful clients can rent GPUs without an operator.
SIGNUP_CREDIT = "20"


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.project = f"gwcluster{uuid.uuid4().hex[:8]}"
        self.api_port = free_port()
        self.nats_ports = {node: free_port() for node in NODES}
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.prometheus_url = f"http://127.0.0.1:{free_port()}"
        users = [*ROLE_USERS, *(agent_user(h) for h in HOSTS)]
        self.passwords = {user: new_password() for user in users}
        master = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
            "GPUWORKER_SECRET_KEY": master,
            # What compose.yaml's own GPU host gets instead of the master key.
            "GPUWORKER_HOST_1_KEY": host_key(master, "host-1"),
            "GPUWORKER_JWT_SECRET": secrets.token_urlsafe(48),
            **{password_variable(user): pw for user, pw in self.passwords.items()},
        }
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")},
            **self.secrets,
            "COMPOSE_PROJECT_NAME": self.project,
            "GPUWORKER_API_PORT": str(self.api_port),
            **{f"GPUWORKER_NATS{i + 1}_PORT": str(self.nats_ports[n]) for i, n in enumerate(NODES)},
            "GPUWORKER_PROMETHEUS_PORT": self.prometheus_url.rsplit(":", 1)[1],
            "GPUWORKER_SIGNUP_CREDIT": SIGNUP_CREDIT,
        }

    # -- compose -------------------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose"]
        for file in COMPOSE_FILES:
            command += ["-f", str(ROOT / file)]
        result = subprocess.run(
            [*command, "--project-directory", str(ROOT), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr}"
        return result

    def build_images(self) -> float:
        started = time.monotonic()
        built = subprocess.run(
            [str(ROOT / "deploy/build-images")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        return time.monotonic() - started

    def up(self) -> float:
        assert shutil.which("docker-compose"), "docker-compose is missing (.ci/setup installs it)"
        started = time.monotonic()
        self.compose("up", "-d", "--no-build")
        self.wait_healthy(180)
        return time.monotonic() - started

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5")

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", *services).stdout

    def containers(self, service: str) -> list[str]:
        """The running containers of a service (one per replica), by name."""
        out = subprocess.run(
            [
                "docker",
                "ps",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return sorted(out)

    def crash(self, container: str) -> None:
        """SIGKILL of the container's PID 1 from the host: the process dies as in a crash, and
        the restart policy applies (`docker kill` would count as an operator's stop)."""
        pid = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert pid.isdigit() and int(pid) > 0, f"{container} is not running"
        os.kill(int(pid), 9)

    def run_in(self, service: str, *command: str, user: str | None = None) -> str:
        """A command in a running container of `service`, logged in to NATS as `user`."""
        login = []
        if user is not None:
            login = ["-e", f"GPUWORKER_NATS_USER={user}"]
            login += ["-e", f"GPUWORKER_NATS_PASSWORD={self.passwords[user]}"]
        return self.compose("exec", "-T", *login, service, *command, timeout=120).stdout

    # -- state -----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.url}/health", timeout=5)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 and body.get("status") == "ok" else None

    def wait_healthy(self, timeout_s: float) -> float:
        started = time.monotonic()
        while self.health() is None:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"the cluster is not healthy:\n{self.logs()}")
            time.sleep(0.5)
        return time.monotonic() - started

    @property
    def nats_url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.nats_ports.values())

    async def stream_info(self, node: str | None = None) -> StreamInfo:
        """The event stream as the cluster reports it (its leader, replicas and their lag)."""
        servers = (
            [f"nats://127.0.0.1:{self.nats_ports[node]}"] if node else nats_servers(self.nats_url)
        )
        nc = await nats.connect(
            servers=servers,
            user="operator",
            password=self.passwords["operator"],
            inbox_prefix="_INBOX.operator",
            allow_reconnect=False,
            connect_timeout=3,
        )
        try:
            return await nc.jetstream(timeout=5).stream_info("EVENTS")
        finally:
            await nc.close()

    def credit(self, email: str, usd: str) -> None:
        out = self.run_in(
            "api",
            "gpuworker",
            "billing",
            "credit",
            email,
            usd,
            "--reason",
            "cluster check",
            user="operator",
        )
        assert "credited" in out, out
