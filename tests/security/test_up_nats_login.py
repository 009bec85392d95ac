"""`gpuworker up` with its embedded nats-server: the server requires a login, the generated
credentials sit in the data folder (0600) and survive a restart, and the local agent's user covers
only this host."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from services.cli.embedded import free_port
from services.config import default_host_id
from services.nats_credentials import load
from services.nats_permissions import ROLE_USERS
from tests.servers import create_database

ROOT = Path(__file__).resolve().parents[2]
UP_FLAGS = ["--runtime", "simulated", "--gpus", "NVIDIA L40S:1"]


def start_up(data_dir: Path, database_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUWORKER_", "NATS_"))}
    env["DATABASE_URL"] = database_url
    flags = ["--port", str(port), "--data-dir", str(data_dir), *UP_FLAGS]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", *flags],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while "GPUWorker is up" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"up did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def nats_url(data_dir: Path) -> str:
    listen = re.search(r'^listen: "([\d.]+:\d+)"', (data_dir / "nats.conf").read_text(), re.M)
    assert listen, "the embedded server's config names its address"
    return f"nats://{listen[1]}"


async def anonymous_is_refused(url: str) -> None:
    async def quiet(_exc: Exception) -> None:
        return None

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=quiet)


def test_up_requires_a_nats_login_with_credentials_kept_in_its_data_folder(
    tmp_path: Path, pg_base_uri: str
) -> None:
    data_dir = tmp_path / "data"
    database_url = create_database(pg_base_uri)
    port = free_port()
    process = start_up(data_dir, database_url, port, tmp_path / "up.log")
    try:
        credentials_path = data_dir / "nats-credentials.json"
        assert credentials_path.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "nats-authorization.conf").stat().st_mode & 0o777 == 0o600
        first = load(credentials_path)
        assert set(first.roles) == set(ROLE_USERS)
        # One agent: this machine's, for this host only.
        assert set(first.agents) == {default_host_id()}
        assert not first.agents[default_host_id()].fleet
        asyncio.run(anonymous_is_refused(nats_url(data_dir)))
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200, health.text
    finally:
        stop(process)
    process = start_up(data_dir, database_url, free_port(), tmp_path / "up-again.log")
    try:
        assert load(credentials_path) == first, "restarts reuse the generated credentials"
        asyncio.run(anonymous_is_refused(nats_url(data_dir)))
    finally:
        stop(process)
