"""`gpuworker up`: every role in one process tree, with embedded servers unless configured.

Every process runs under `services.cli.supervisor`: a role, nats-server or PostgreSQL that dies is
started again and the others carry on (roles reconnect on their own); /health shows the state of
each, read from the supervisor's status file."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from services.cli.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    load_or_create_secrets,
)
from services.cli.supervisor import (
    Supervised,
    Supervisor,
    become_subreaper,
    describe_exit,
    reap_orphans,
)
from services.config import default_host_id

log = logging.getLogger("gpuworker.up")

ROLES = ("deciders", "projector", "ledger", "audit", "api", "agent")
# A new user of `up` can try everything: $5.00 on every new account unless set otherwise.
DEFAULT_SIGNUP_CREDIT = "5.00"
STATUS_FILE = "supervisor.json"
# A role that cannot get through start-up this many times is a setup error, not a crash.
START_ATTEMPTS = 3


def roles() -> tuple[str, ...]:
    """The roles `up` runs: all of them, less the agent when GPUWORKER_AGENT=0 (the host's agent
    runs on its own, e.g. under systemd or a test that restarts it)."""
    if os.environ.get("GPUWORKER_AGENT") == "0":
        return tuple(role for role in ROLES if role != "agent")
    return ROLES


class RoleProcess:
    """One role as a child process (its own session: Ctrl-C reaches `up`, which stops it)."""

    def __init__(self, role: str, args: list[str], env: dict[str, str]) -> None:
        self.role = role
        self._args = args
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(self._args, env=self._env, start_new_session=True)
        self.starts += 1

    def ended(self) -> str | None:
        if self.process is None:
            return "never started"
        code = self.process.poll()
        return None if code is None else describe_exit(code)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def supervised(self) -> Supervised:
        return Supervised(self.role, self.start, self.ended, self.stop)


def _wait_healthy(
    url: str,
    supervisor: Supervisor,
    roles: list[RoleProcess],
    timeout_s: float,
    own_pids: Callable[[], set[int]],
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reap_orphans(own_pids())
        supervisor.check()
        for role in roles:
            if role.starts > START_ATTEMPTS:
                raise RuntimeError(
                    f"the {role.role} role failed {START_ATTEMPTS} times during start-up"
                    f" (last: {role.ended() or 'restarting'}); see its log lines above"
                )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s}s")


CONNECTION_FILE = "connection.env"


def write_connection_env(data_dir: Path, env: dict[str, str]) -> None:
    """Where this `up`'s servers are, for an operator's commands against them (`set -a; .
    DATA_DIR/connection.env` before `gpuworker projections rebuild` or `gpuworker blog publish`)."""
    names = (
        "DATABASE_URL",
        "NATS_URL",
        "GPUWORKER_NATS_CREDENTIALS",
        "GPUWORKER_SECRET_KEY",
        "GPUWORKER_JWT_SECRET",
    )
    path = data_dir / CONNECTION_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={shlex.quote(env[name])}\n" for name in names if env.get(name))


def up(
    host: str,
    port: int,
    data_dir: Path,
    runtime: str | None,
    gpus: str | None,
    datacenter: str,
) -> int:
    env = dict(os.environ)
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    supervisor = Supervisor(data_dir / STATUS_FILE)
    servers: list[EmbeddedNats] = []
    children: list[RoleProcess] = []

    def own_pids() -> set[int]:
        popens = [c.process for c in children] + [n.process for n in servers]
        return {p.pid for p in popens if p is not None}

    try:
        if not env.get("DATABASE_URL"):
            log.info("starting embedded PostgreSQL in %s", data_dir / "postgres")
            postgres = EmbeddedPostgres(data_dir / "postgres")
            supervisor.add(Supervised("postgres", postgres.start, postgres.ended, postgres.stop))
            env["DATABASE_URL"] = postgres.url
        if "agent" in roles():
            env["GPUWORKER_HOST_ID"] = default_host_id()
        if not env.get("NATS_URL"):
            nats = EmbeddedNats(data_dir / "nats", free_port(), log_file=data_dir / "nats.log")
            if "agent" in roles():
                # This machine's agent may speak for this host only.
                nats.add_agent(env["GPUWORKER_HOST_ID"])
            log.info("starting embedded nats-server on %s", nats.url)
            supervisor.add(Supervised("nats-server", nats.start, nats.ended, nats.stop))
            env["NATS_URL"] = nats.url
            servers.append(nats)
            # Each role logs in as its own user from the data folder's credentials file.
            env["GPUWORKER_NATS_CREDENTIALS"] = str(nats.credentials_path)
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
        write_connection_env(data_dir, env)
        env["GPUWORKER_DATACENTER"] = datacenter
        env.setdefault("GPUWORKER_SIGNUP_CREDIT", DEFAULT_SIGNUP_CREDIT)
        env["GPUWORKER_SUPERVISOR_STATUS"] = str(data_dir / STATUS_FILE)
        env.setdefault("GPUWORKER_AGENT_STATE_DIR", str(data_dir / "agent"))
        # This machine's agent relays its serverless workers' protocol traffic to this api.
        reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
        reach = f"[{reach}]" if ":" in reach else reach
        env.setdefault("GPUWORKER_AGENT_API_URL", f"http://{reach}:{port}")
        if runtime:
            env["GPUWORKER_RUNTIME"] = runtime
        if gpus:
            env["GPUWORKER_GPUS"] = gpus
        metrics_port = env.pop("GPUWORKER_METRICS_PORT", None)
        for index, role in enumerate(roles()):
            args = [sys.executable, "-m", "services.cli.main", role]
            if role == "api":
                args += ["--host", host, "--port", str(port)]
            role_env = env
            if metrics_port and role != "api":
                # One process per role here: each gets its own port, the next one up.
                role_env = {**env, "GPUWORKER_METRICS_PORT": str(int(metrics_port) + index)}
                log.info("%s metrics on port %s", role, role_env["GPUWORKER_METRICS_PORT"])
            child = RoleProcess(role, args, role_env)
            supervisor.add(child.supervised())
            children.append(child)
        url = f"http://{host}:{port}"
        _wait_healthy(url, supervisor, children, 60, own_pids)
        print(f"GPUWorker is up at {url} (API docs: {url}/docs)", flush=True)
        while not stopping:
            reap_orphans(own_pids())
            supervisor.check()
            supervisor.settle()
            time.sleep(0.2)
        return 0
    except Exception as exc:
        log.error("gpuworker up failed: %s", exc)
        return 1
    finally:
        supervisor.stop_all()
        log.info("stopped")
