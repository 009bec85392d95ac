"""`gpuworker up` survives the death of any of its processes: a role, nats-server, PostgreSQL.

Everything is real and embedded, as a new user runs it (README's first line); each process is
SIGKILLed, and the product must come back by itself, without taking the others down, and say so
on /health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from services.cli.embedded import free_port
from tests.api_helpers import template_body

SIMULATED = "NVIDIA GeForce RTX 4090:2"


class Up:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "up.log"
        self.data_dir = tmp / "data"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "NATS_URL", "GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET")
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli.main",
                    "up",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--runtime",
                    "simulated",
                    "--gpus",
                    SIMULATED,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while "GPUWorker is up" not in self.logs():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"up did not start:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def role_pid(self, role: str) -> int | None:
        """The live process of the role (None while it is down)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if cmdline[-1:] == [role] or (
                role == "api" and "api" in cmdline and "--port" in cmdline
            ):
                return int(child.pid)
        return None

    def server_pid(self, name: str) -> int | None:
        if name == "postgres":
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
            alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            return pid if alive else None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.name() == "nats-server" and child.status() != psutil.STATUS_ZOMBIE:
                    return int(child.pid)
            except psutil.Error:
                continue
        return None

    def health(self) -> dict[str, object]:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            body: dict[str, object] = client.get("/health").json()
        return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    os.chmod(tmp_path, 0o755)  # the embedded PostgreSQL runs as its own user when we are root
    stack = Up(tmp_path)
    yield stack
    stack.stop()


def eventually(check: object, timeout_s: float = 60.0, what: str = "") -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except (httpx.HTTPError, OSError, KeyError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def signup_and_write(url: str) -> None:
    """A user signs up and creates a template; both must work end to end."""
    with httpx.Client(base_url=url, timeout=15) as client:
        email = f"sup-{uuid.uuid4().hex}@example.com"
        r = client.post(
            "/auth/signup", json={"name": "S", "email": email, "password": "correct horse"}
        )
        assert r.status_code == 201, r.text
        token = r.json()["access_token"]
        r = client.post(
            "/templates", json=template_body(), headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 201, r.text
        got = client.get(
            f"/templates/{r.json()['id']}", headers={"authorization": f"Bearer {token}"}
        )
        assert got.status_code == 200, got.text


def works(url: str) -> bool:
    try:
        signup_and_write(url)
    except AssertionError:
        return False
    return True


def test_a_killed_role_is_restarted_and_nothing_else_stops(up: Up) -> None:
    signup_and_write(up.url)
    others = {role: up.role_pid(role) for role in ("api", "deciders", "agent")}
    victim = up.role_pid("projector")
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: up.role_pid("projector") not in (None, victim), 30, "the projector to come back"
    )
    assert {role: up.role_pid(role) for role in others} == others, "the other roles kept running"
    assert up.process.poll() is None, "up itself is still running"
    assert "projector killed by SIGKILL; restarting it" in up.logs()
    eventually(lambda: works(up.url), 60, "writes with read-your-writes to work again")
    processes = up.health()["processes"]
    assert isinstance(processes, dict)
    assert processes["projector"]["restarts"] == 1
    assert processes["projector"]["lastExit"] == "killed by SIGKILL"


def test_killed_servers_are_restarted_and_roles_reconnect(up: Up) -> None:
    roles = {role: up.role_pid(role) for role in ("api", "deciders", "projector", "agent")}
    for server in ("nats-server", "postgres"):
        victim = up.server_pid(server)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda server=server, victim=victim: up.server_pid(server) not in (None, victim),
            60,
            f"{server} to come back",
        )
        eventually(lambda: works(up.url), 90, f"writes to work again after {server} died")
    assert {role: up.role_pid(role) for role in roles} == roles, "no role had to restart"
    logs = up.logs()
    assert "nats-server killed by SIGKILL; restarting it" in logs
    assert "postgres is gone" in logs


def test_a_crash_looping_role_is_reported_on_health(up: Up) -> None:
    for _ in range(3):
        victim = up.role_pid("agent")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda victim=victim: up.role_pid("agent") not in (None, victim),
            60,
            "a new agent",
        )

    def looping() -> bool:
        health = up.health()
        processes = health["processes"]
        assert isinstance(processes, dict)
        return health["status"] == "degraded" and processes["agent"]["state"] == "crash-looping"

    eventually(looping, 30, "health to say the agent is crash-looping")
    assert "crash-looping" in up.logs()
