"""Helpers for bench/placement.py and bench/lifecycle.py: the product's roles run one by one
against our own embedded servers, so the benchmark knows DATABASE_URL / NATS_URL and controls
the agent (`gpuworker up` hides both).

`RoleStack` = embedded nats-server (fsync always, as `up` runs it) + embedded PostgreSQL +
`gpuworker deciders|projector|ledger|api` + one `gpuworker agent ...`, each a subprocess we
started and stop by PID (benchlib.stop_tree), in reverse order, on any exit path."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    BENCH_CREDIT_USD,
    HOST,
    ROOT,
    NatsServer,
    Postgres,
    free_port,
    http_json,
    stop_tree,
    tail,
)

from services.cli.embedded import load_or_create_secrets
from services.config import default_host_id

DATACENTER = "US-TX-3"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class RoleStack:
    """The product, role by role. `agent_args` are the arguments after `gpuworker agent`."""

    def __init__(self, workdir: Path, agent_args: list[str], datacenter: str = DATACENTER) -> None:
        self.workdir = workdir
        self.agent_args = agent_args
        self.datacenter = datacenter
        self.nats = NatsServer(workdir, sync_always=True)
        self.postgres = Postgres(workdir)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env: dict[str, str] = {}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start_servers(self) -> None:
        self.nats.start()
        self.postgres.start()
        keys = load_or_create_secrets(self.workdir / "keys")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GPUWORKER_") and k not in {"DATABASE_URL", "NATS_URL"}
        }
        env.update(
            DATABASE_URL=self.postgres.url,
            NATS_URL=self.nats.url,
            # Each role logs in as its own user from the server's credentials file.
            GPUWORKER_NATS_CREDENTIALS=str(self.nats.credentials_path),
            GPUWORKER_SECRET_KEY=keys["secret_key"],
            GPUWORKER_JWT_SECRET=keys["jwt_secret"],
            GPUWORKER_DATACENTER=self.datacenter,
            # A slow full-size run may outlast the default 15 min access tokens.
            GPUWORKER_ACCESS_TOKEN_TTL="86400",
            # Benchmark users hold hundreds of instances each: no per-user quotas.
            GPUWORKER_QUOTA_GPUS="0",
            GPUWORKER_QUOTA_VOLUMES="0",
            GPUWORKER_QUOTA_VOLUME_GB="0",
            GPUWORKER_QUOTA_TEMPLATES="0",
            # Creates are refused (402) without money: see benchlib.fund.
            GPUWORKER_SIGNUP_CREDIT=BENCH_CREDIT_USD,
        )
        self.env = env

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"role {name} exited with {proc.returncode}:\n"
                    f"{tail(self.workdir / f'{name}.log')}"
                )

    def start_control_plane(self, timeout_s: float = 120.0) -> None:
        self.spawn("deciders", ["deciders"])
        self.spawn("projector", ["projector"])
        # Balances (the signup credit) and spend control: creates are checked against them.
        self.spawn("ledger", ["ledger"])
        self.spawn("api", ["api", "--host", HOST, "--port", str(self.port)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            status, _ = http_json("GET", f"{self.url}/health", timeout_s=2)
            if status == 200:
                return
            time.sleep(0.2)
        log = tail(self.workdir / "api.log")
        raise TimeoutError(f"api not healthy within {timeout_s}s:\n{log}")

    def start_agent(self) -> subprocess.Popen[bytes]:
        args = self.agent_args
        host_id = args[args.index("--host-id") + 1] if "--host-id" in args else default_host_id()
        hosts = int(args[args.index("--simulate-hosts") + 1]) if "--simulate-hosts" in args else 1
        # The agent's own login; a simulated fleet's covers the host ids under its own.
        self.nats.add_agent(host_id, fleet=hosts > 1)
        return self.spawn("agent", ["agent", "--datacenter", self.datacenter, *args])

    def start(self) -> None:
        self.start_servers()
        self.start_control_plane()
        self.start_agent()

    def stop(self) -> None:
        """Roles in reverse start order (agent first), then the servers. Never raises."""
        for _name, proc in reversed(self.procs):
            try:
                stop_tree(proc, timeout_s=20)
            except Exception as exc:
                print(f"warning: stopping pid {proc.pid}: {exc}", file=sys.stderr)
        self.procs.clear()
        for server in (self.nats, self.postgres):
            try:
                server.stop()
            except Exception as exc:
                print(f"warning: stopping {type(server).__name__}: {exc}", file=sys.stderr)

    def __enter__(self) -> RoleStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def available_gpus(url: str, token: str, gpu_type_id: str, datacenter: str) -> tuple[int, int]:
    """(available, total) of the type in the data center, from GET /gpu-types."""
    status, body = http_json("GET", f"{url}/gpu-types", token=token, timeout_s=30)
    if status != 200:
        return 0, 0
    for gpu in body:
        if gpu["id"] == gpu_type_id:
            for a in gpu["availability"]:
                if a["dataCenterId"] == datacenter and a["cloudType"] == "SECURE":
                    return int(a["available"]), int(a["total"])
    return 0, 0


def wait_for_capacity(
    stack: RoleStack, token: str, gpu_type_id: str, wanted: int, timeout_s: float
) -> float:
    """Seconds until GET /gpu-types shows `wanted` available GPUs of the type."""
    started = time.monotonic()
    deadline = started + timeout_s
    seen = (0, 0)
    while time.monotonic() < deadline:
        stack.check_alive()
        seen = available_gpus(stack.url, token, gpu_type_id, stack.datacenter)
        if seen[0] >= wanted:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(
        f"only {seen[0]}/{wanted} {gpu_type_id} available after {timeout_s}s:\n"
        f"{tail(stack.workdir / 'agent.log')}"
    )
