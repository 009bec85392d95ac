"""`gpuworker up`: every role in one process tree, with embedded servers unless configured."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from services.cli.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    load_or_create_secrets,
)
from services.config import default_host_id

log = logging.getLogger("gpuworker.up")

ROLES = ("deciders", "projector", "api", "agent")


def roles() -> tuple[str, ...]:
    """The roles `up` runs: all of them, less the agent when GPUWORKER_AGENT=0 (the host's agent
    runs on its own, e.g. under systemd or a test that restarts it)."""
    if os.environ.get("GPUWORKER_AGENT") == "0":
        return tuple(role for role in ROLES if role != "agent")
    return ROLES


def _wait_healthy(url: str, children: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(f"a role exited during start-up (code {child.returncode})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s}s")


def up(
    host: str,
    port: int,
    data_dir: Path,
    runtime: str | None,
    gpus: str | None,
    datacenter: str,
) -> int:
    env = dict(os.environ)
    embedded_pg: EmbeddedPostgres | None = None
    embedded_nats: EmbeddedNats | None = None
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        data_dir = data_dir.resolve()
        if not env.get("DATABASE_URL"):
            log.info("starting embedded PostgreSQL in %s", data_dir / "postgres")
            embedded_pg = EmbeddedPostgres(data_dir / "postgres")
            env["DATABASE_URL"] = embedded_pg.url
        if "agent" in roles():
            env["GPUWORKER_HOST_ID"] = default_host_id()
        if not env.get("NATS_URL"):
            embedded_nats = EmbeddedNats(data_dir / "nats", free_port())
            if "agent" in roles():
                # This machine's agent may speak for this host only.
                embedded_nats.add_agent(env["GPUWORKER_HOST_ID"])
            log.info("starting embedded nats-server on %s", embedded_nats.url)
            embedded_nats.start(data_dir / "nats.log")
            env["NATS_URL"] = embedded_nats.url
            # Each role logs in as its own user from the data folder's credentials file.
            env["GPUWORKER_NATS_CREDENTIALS"] = str(embedded_nats.credentials_path)
            env.pop("GPUWORKER_NATS_USER", None)
            env.pop("GPUWORKER_NATS_PASSWORD", None)
        elif not (env.get("GPUWORKER_NATS_CREDENTIALS") or env.get("GPUWORKER_NATS_USER")):
            log.warning(
                "NATS_URL is set without GPUWORKER_NATS_CREDENTIALS or GPUWORKER_NATS_USER:"
                " every role logs in with what NATS_URL carries, if anything"
            )
        if not env.get("GPUWORKER_SECRET_KEY") or not env.get("GPUWORKER_JWT_SECRET"):
            keys = load_or_create_secrets(data_dir)
            env.setdefault("GPUWORKER_SECRET_KEY", keys["secret_key"])
            env.setdefault("GPUWORKER_JWT_SECRET", keys["jwt_secret"])
        env["GPUWORKER_DATACENTER"] = datacenter
        if runtime:
            env["GPUWORKER_RUNTIME"] = runtime
        if gpus:
            env["GPUWORKER_GPUS"] = gpus
        for role in roles():
            args = [sys.executable, "-m", "services.cli.main", role]
            if role == "api":
                args += ["--host", host, "--port", str(port)]
            # Children ignore the terminal's Ctrl-C; this process stops them in order.
            children.append(subprocess.Popen(args, env=env, start_new_session=True))
        url = f"http://{host}:{port}"
        _wait_healthy(url, children, 60)
        print(f"GPUWorker is up at {url} (API docs: {url}/docs)", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    log.error("a role exited with code %s; shutting down", child.returncode)
                    stopping = True
            time.sleep(0.2)
        return 0
    except Exception as exc:
        log.error("gpuworker up failed: %s", exc)
        return 1
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(children):
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if embedded_nats:
            embedded_nats.stop()
        if embedded_pg:
            embedded_pg.stop()
        log.info("stopped")
