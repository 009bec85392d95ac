"""Real PostgreSQL and NATS servers for tests, on free ports in temporary folders.

NATS is the embedded server `gpuworker up` runs: every client logs in as a role's user, with that
role's permissions, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
from nats.aio.client import Client as NatsClient

from services.cli.embedded import EmbeddedNats, free_port
from services.config import default_host_id
from services.nats_permissions import inbox_prefix
from services.security.secret_box import generate_key

SIMULATED_GPUS = "NVIDIA GeForce RTX 4090:4,NVIDIA A100 80GB PCIe:2"


def create_database(base_uri: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    # The embedded server's URI is postgresql://postgres:@/postgres?host=SOCKETDIR
    return base_uri.replace("/postgres?", f"/{name}?", 1)


def new_nats(tmp: Path, sync_always: bool = False) -> EmbeddedNats:
    server = EmbeddedNats(tmp / f"nats-{uuid.uuid4().hex[:8]}", free_port(), sync_always)
    server.start(tmp / "nats.log")
    return server


async def connect_as(server: EmbeddedNats, user: str, **options: Any) -> NatsClient:
    """A client logged in as `user` (a role, or `agent-<host>`), with that user's own inbox."""
    login = server.login(user)
    return await nats.connect(
        server.url,
        user=login.user,
        password=login.password,
        inbox_prefix=inbox_prefix(login.user),
        **options,
    )


def settings_env(database_url: str, nats: EmbeddedNats) -> dict[str, str]:
    """A role's environment: each role finds its own NATS user in the server's credentials."""
    return {
        "DATABASE_URL": database_url,
        "NATS_URL": nats.url,
        "GPUWORKER_NATS_CREDENTIALS": str(nats.credentials_path),
        "GPUWORKER_SECRET_KEY": generate_key(),
        "GPUWORKER_JWT_SECRET": generate_key(),
    }


def agent_command(runtime: str, gpus: str, host_id: str | None = None) -> list[str]:
    """`gpuworker agent` as a test starts it: this interpreter, a runtime and a GPU inventory."""
    command = [sys.executable, "-m", "services.cli.main", "agent", "--runtime", runtime]
    command += ["--gpus", gpus]
    return command + (["--host-id", host_id] if host_id else [])


@dataclass
class Stack:
    """`gpuworker up` against test servers, as a user would run it."""

    url: str
    log_path: Path
    env: dict[str, str]
    nats: EmbeddedNats
    database_url: str
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running_stack(
    tmp: Path,
    base_pg_uri: str,
    nats: EmbeddedNats | None = None,
    runtime: str = "simulated",
    gpus: str = SIMULATED_GPUS,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    nats = nats or new_nats(tmp)
    # `up` runs this machine's agent, which may speak only for this host.
    nats.add_agent(default_host_id())
    database_url = create_database(base_pg_uri)
    port = free_port()
    env = {**os.environ, **settings_env(database_url, nats), **(extra_env or {})}
    log_path = tmp / f"stack-{port}.log"
    stack = Stack(f"http://127.0.0.1:{port}", log_path, env, nats, database_url)
    with open(log_path, "wb") as log:
        stack.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(tmp / f"data-{port}"),
                "--runtime",
                runtime,
                "--gpus",
                gpus,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "GPUWorker is up" not in stack.logs():
            if stack.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stack did not start:\n{stack.logs()}")
            time.sleep(0.1)
        yield stack
    finally:
        stack.stop()
        nats.stop()
