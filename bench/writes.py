"""Write throughput: POST /templates on the full stack vs a "raw floor" app.

    .venv/bin/python bench/writes.py [--duration 10] [--connections 16,32] [--warmup 2]

Full stack: `gpuworker up` in a temp dir; each POST goes api -> NATS request -> decider (load,
decide, JetStream append with fsync) -> projector (PostgreSQL upsert + checkpoint NOTIFY) -> api
answers 201 once the read model holds it (read-your-writes).
Floor: bench/baseline_app.py writes -- the same body validation, then one JetStream publish with
ack (file storage, fsync always, like the product's embedded nats-server) and one PostgreSQL
INSERT + commit, on the same uvicorn settings, against its own embedded servers.

Both run `wrk -t1 -cN -dDs --latency` with the same Lua script (same JSON body, Bearer header;
it counts 201s). Afterwards the read model is checked: the user's templates (GET /templates) must
equal the 201s wrk saw, plus at most the requests still in flight when wrk stopped (wrk does not
count a response that arrives after its deadline, but the server still completes the write).

Unless --no-lazy, the pair is measured again on a nats-server with its default (lazy) fsync -- the
full stack then uses it through NATS_URL -- to show how much of the cost is the disk's fsync
(printed as fsyncs/s): informational only, the goals are judged on the product's default."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psycopg
from benchlib import (
    CpuMeter,
    NatsServer,
    Postgres,
    PythonServer,
    Stack,
    WrkResult,
    fsync_rate,
    http_list,
    lua_script,
    machine_line,
    make_workdir,
    remove_workdir,
    run_wrk,
    signup,
    sigterm_as_interrupt,
    verdict,
    wrk_table,
)

BUILT_IN = 4
GOAL_RATIO = 0.5
GOAL_WRITES_PER_S = 1000.0
GOAL_P99_MS = 50.0
BODY = json.dumps(
    {
        "name": "bench write",
        "imageName": "ghcr.io/bench/writer:latest",
        "dockerStartCmd": "python -m http.server 8888",
        "containerDiskInGb": 40,
        "volumeInGb": 100,
        "env": {"MODEL": "llama", "HF_HOME": "/workspace/hf"},
        "ports": ["8888/http", "22/tcp"],
        "readme": "Written by bench/writes.py.",
    },
    separators=(",", ":"),
)


@dataclass(frozen=True)
class Check:
    """201s counted by wrk (warm-up + measured run) vs rows that exist afterwards."""

    created: int
    rows: int
    other: int
    slack: int

    @property
    def in_flight(self) -> int:
        return self.rows - self.created

    @property
    def ok(self) -> bool:
        return self.other == 0 and 0 <= self.in_flight <= self.slack

    def line(self) -> str:
        return (
            f"201s {self.created}, rows {self.rows}, in flight at wrk's stop {self.in_flight}"
            f" (allowed 0..{self.slack}), other statuses {self.other} -> {verdict(self.ok)}"
        )


def settled_count(count: Callable[[], int], timeout_s: float = 20.0) -> int:
    """Poll a counter until it stops moving (in-flight requests finish), bounded."""
    deadline = time.monotonic() + timeout_s
    last = count()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = count()
        if now == last:
            return now
        last = now
    return last


def own_templates(url: str, token: str) -> int:
    status, body = http_list(f"{url}/templates", token=token, timeout_s=60)
    if status != 200:
        raise RuntimeError(f"GET /templates answered {status}")
    return len(body) - BUILT_IN


def measure(
    label: str,
    url: str,
    token: str,
    workdir: Path,
    connections: int,
    duration: int,
    warmup: int,
    meter: CpuMeter,
) -> tuple[WrkResult, int, int]:
    """(measured result, 201s over warm-up + run, non-201 responses over both)."""
    script = lua_script(token, "POST", BODY, count_created=True)
    created = other = 0
    if warmup:
        w = run_wrk("warm-up", url, script, workdir, connections, warmup)
        created, other = w.created, w.other + w.socket_errors
    r = run_wrk(label, url, script, workdir, connections, duration, meter=meter)
    return r, created + r.created, other + r.other + r.socket_errors


def floor_rows(conninfo: str) -> int:
    async def count() -> int:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            cur = await conn.execute("SELECT count(*) FROM floor_templates")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    return asyncio.run(count())


@dataclass
class Side:
    """One measured configuration, at every concurrency level."""

    label: str
    results: dict[int, WrkResult] = field(default_factory=dict)
    checks: dict[int, Check] = field(default_factory=dict)


def run_full(label: str, stack: Stack, levels: list[int], args: argparse.Namespace) -> Side:
    side = Side(label)
    for c in levels:
        token = signup(stack.url, f"writes-c{c}")  # one user per level: its own row count
        r, created, other = measure(
            label,
            f"{stack.url}/templates",
            token,
            stack.workdir,
            c,
            args.duration,
            args.warmup,
            stack.meter(),
        )
        rows = settled_count(partial(own_templates, stack.url, token))
        side.results[c], side.checks[c] = r, Check(created, rows, other, slack=2 * c)
        print(f"[writes] {label} c={c}: {r.rps:.1f}/s; {side.checks[c].line()}", flush=True)
    return side


def run_floor(
    label: str,
    floor: PythonServer,
    servers: tuple[NatsServer, Postgres],
    levels: list[int],
    args: argparse.Namespace,
) -> Side:
    side = Side(label)
    nats_server, postgres = servers
    conninfo = postgres.url
    meter = CpuMeter(lambda: [*floor.pids(), *nats_server.pids(), *postgres.pids()])
    for c in levels:
        before = floor_rows(conninfo)
        r, created, other = measure(
            label,
            f"{floor.url}/templates",
            "x",
            floor.workdir,
            c,
            args.duration,
            args.warmup,
            meter,
        )
        rows = settled_count(lambda: floor_rows(conninfo)) - before
        side.results[c], side.checks[c] = r, Check(created, rows, other, slack=2 * c)
        print(f"[writes] {label} c={c}: {r.rps:.1f}/s; {side.checks[c].line()}", flush=True)
    return side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="16,32", help="comma-separated, e.g. 16,32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--no-lazy",
        action="store_true",
        help="skip the informational pair run on a nats-server with its default (lazy) fsync",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    sigterm_as_interrupt()

    workdir = make_workdir("writes")
    for sub in ("stack", "floor", "lazy"):
        (workdir / sub).mkdir()
    stack = Stack(workdir / "stack")
    postgres = Postgres(workdir / "floor")
    nats_always = NatsServer(workdir / "floor", sync_always=True)
    nats_lazy = NatsServer(workdir / "lazy", sync_always=False)
    lazy_stack = Stack(workdir / "lazy", nats=nats_lazy)
    floors: list[PythonServer] = []
    sides: list[tuple[Side, Side]] = []
    try:
        disk_fsyncs = fsync_rate(workdir)
        print(f"[writes] starting gpuworker up in {workdir / 'stack'} ...", flush=True)
        stack.start()
        full = run_full("full stack", stack, levels, args)
        stack.stop()

        postgres.start()
        nats_always.start()
        floors.append(
            PythonServer(
                workdir / "floor",
                ["writes"],
                {"DATABASE_URL": postgres.url, "NATS_URL": nats_always.url}
                | nats_always.bench_env(),
            )
        )
        floors[-1].start()
        sides.append(
            (full, run_floor("raw floor", floors[-1], (nats_always, postgres), levels, args))
        )
        floors[-1].stop()
        nats_always.stop()

        if not args.no_lazy:
            nats_lazy.start()
            floors.append(
                PythonServer(
                    workdir / "lazy",
                    ["writes"],
                    {"DATABASE_URL": postgres.url, "NATS_URL": nats_lazy.url}
                    | nats_lazy.bench_env(),
                )
            )
            floors[-1].start()
            lazy_floor = run_floor(
                "raw floor, lazy", floors[-1], (nats_lazy, postgres), levels, args
            )
            floors[-1].stop()
            print("[writes] starting gpuworker up with lazy-fsync NATS ...", flush=True)
            lazy_stack.start()
            sides.append((run_full("full stack, lazy", lazy_stack, levels, args), lazy_floor))
    finally:
        for floor in floors:
            floor.stop()
        stack.stop()
        lazy_stack.stop()
        nats_always.stop()
        nats_lazy.stop()
        postgres.stop()
        remove_workdir(workdir)

    report(levels, sides, disk_fsyncs, args)
    return 0


def report(
    levels: list[int], sides: list[tuple[Side, Side]], disk_fsyncs: float, args: argparse.Namespace
) -> None:
    print()
    print("=" * 100)
    print("BENCH writes: POST /templates (201 after the read model holds the template)")
    print(
        f"  wrk -t1 -c{{{args.connections}}} -d{args.duration}s --latency"
        f" (after a {args.warmup}s warm-up each); {machine_line()}"
    )
    print(
        f"  disk: {disk_fsyncs:.0f} fsyncs/s (512-byte write + fsync, sequential) -- the ceiling"
        " of anything that fsyncs once per write without batching"
    )
    rows = [side.results[c] for c in levels for pair in sides for side in pair]
    print(wrk_table(rows, unit="writes/s"))
    print(
        "  CPU ms/req: CPU time of every server process (full stack: api, deciders, projector,"
        " nats-server, PostgreSQL; floor: app, nats-server, PostgreSQL) per write"
    )
    (full, floor), *lazy = sides
    for c in levels:
        f, b = full.results[c], floor.results[c]
        ratio = f.rps / b.rps if b.rps else 0.0
        print(f"  c={c} (product default: nats-server sync_interval always, as `gpuworker up`):")
        print(
            f"    ratio full/floor writes/s: {ratio:.3f}x   goal >= {GOAL_RATIO}x   ->"
            f" {verdict(ratio >= GOAL_RATIO)}"
        )
        print(
            f"    full stack writes/s: {f.rps:.1f}   goal >= {GOAL_WRITES_PER_S:.0f}   ->"
            f" {verdict(f.rps >= GOAL_WRITES_PER_S)}"
        )
        print(
            f"    full stack p99: {f.p99_ms:.1f} ms   goal <= {GOAL_P99_MS:.0f} ms   ->"
            f" {verdict(f.p99_ms <= GOAL_P99_MS)}"
        )
        print(f"    read model check (full stack): {full.checks[c].line()}")
        print(f"    row check (floor):             {floor.checks[c].line()}")
        for lazy_full, lazy_floor in lazy:
            lf, lb = lazy_full.results[c], lazy_floor.results[c]
            lratio = lf.rps / lb.rps if lb.rps else 0.0
            print(
                f"    [info] lazy fsync: full {lf.rps:.1f}/s p99 {lf.p99_ms:.1f} ms,"
                f" floor {lb.rps:.1f}/s p99 {lb.p99_ms:.1f} ms, ratio {lratio:.3f}x;"
                f" checks {verdict(lazy_full.checks[c].ok)}/{verdict(lazy_floor.checks[c].ok)}"
            )
    print("=" * 100)


if __name__ == "__main__":
    sys.exit(main())
