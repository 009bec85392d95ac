"""`gpuworker up` as a new user runs it (embedded PostgreSQL and nats-server, simulated GPUs), with
what fault tests need: the PIDs of its processes and its servers' connection settings."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from services.cli.embedded import free_port

SIMULATED = "NVIDIA GeForce RTX 4090:2"


class Up:
    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "up.log"
        self.data_dir = tmp / "data"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "NATS_URL", "GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET")
        } | (extra_env or {})
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

    def connection(self) -> dict[str, str]:
        """The servers' settings `up` wrote for operators (DATABASE_URL, NATS_URL, keys)."""
        settings = {}
        for line in (self.data_dir / "connection.env").read_text().splitlines():
            name, _, value = line.partition("=")
            settings[name] = shlex.split(value)[0]
        return settings

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
