"""Placement throughput: fill a simulated fleet through POST /instances, then prove no GPU is given
twice.

    .venv/bin/python bench/placement.py [--hosts 1000] [--creates HOSTS*8] [--concurrency 32]
                                        [--users 16] [--poll db|api] [--keep]

Setup (temp dir, everything stopped by PID on exit, Ctrl-C included): embedded nats-server
(fsync always, as `gpuworker up` runs it) and embedded PostgreSQL; `gpuworker deciders`,
`projector`, `api`; one `gpuworker agent --simulate-hosts HOSTS --gpus "NVIDIA GeForce RTX 4090:8"
--runtime simulated` process (kwok-style: one process, HOSTS registered hosts, no containers).
We wait until GET /gpu-types shows HOSTS*8 available RTX 4090s.

Measured: CREATES POSTs /instances (template pytorch-cuda12-2.1, gpuCount 1) with at most
CONCURRENCY in flight (httpx.AsyncClient), spread round-robin over USERS signed-up users.
- placements/s = 201s / wall seconds from the first POST to the last response (goal >= 500/s);
- create latency p50/p99 (POST sent -> response);
- create-to-RUNNING p50/p99: POST sent -> first poll that sees the instance RUNNING. `--poll db`
  (default) reads the instances read model (the very rows GET /instances/{id} answers from) for
  all pending ids in one query every 100 ms, which costs the stack almost nothing; `--poll api`
  calls GET /instances of each user with pending instances every 100 ms (heavier: it competes
  with the creates for the api's CPU). Either way the figure is quantised to the poll interval.
- one more create once the fleet is full must be 409 with "no capacity".
Checked afterwards on the read models (hosts, instances): every allocated GPU is one of its host's
GPUs and held by a live instance with that lease; no GPU is held by two instances; every RUNNING
instance holds exactly its gpu_uuids on its host; allocated GPUs == live instances == RUNNING, and
== 201s (== CREATES): a 503 "may or may not have been applied" whose placement happened is shown.

Baseline (same run, same nats-server, before the roles start): raw JetStream publishes with ack of
CREATES messages of MSG_SIZE bytes to a stream of its own (file storage, fsync always), with a
Nats-Msg-Id header as the product's appends carry: sequential `await js.publish`, 32 concurrent
publishers, and pipelined `publish_async`. ratio = placements/s / sequential publishes/s (one
placement appends at least two events, GpusAllocated + InstanceCreated, each fsynced)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from benchlib import (
    NatsServer,
    fund,
    http_json,
    machine_line,
    make_workdir,
    remove_workdir,
    signup,
    sigterm_as_interrupt,
    verdict,
)
from fleet_lib import RoleStack, percentile, wait_for_capacity
from nats.js.api import StorageType, StreamConfig

GPU_TYPE = "NVIDIA GeForce RTX 4090"
TEMPLATE = "pytorch-cuda12-2.1"
GOAL_PLACEMENTS_PER_S = 500.0


# ---------------------------------------------------------------------------------------------
# Baseline: raw JetStream publish with ack


@dataclass(frozen=True)
class RawRates:
    sequential: float
    concurrent: float
    pipelined: float
    concurrency: int


async def raw_publish_rates(
    server: NatsServer, count: int, size: int, concurrency: int
) -> RawRates:
    nc = await server.connect("bench-raw-publish")
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(
            StreamConfig(name="BENCH_RAW", subjects=["benchraw.>"], storage=StorageType.FILE)
        )
        payload = (b'{"bench":"' + b"x" * size)[: size - 2] + b'"}'

        def headers() -> dict[str, str]:
            return {"Nats-Msg-Id": uuid.uuid4().hex}

        async def sequential() -> float:
            started = time.perf_counter()
            for i in range(count):
                await js.publish(f"benchraw.seq.{i}", payload, headers=headers())
            return count / (time.perf_counter() - started)

        async def concurrent() -> float:
            queue = iter(range(count))

            async def worker() -> None:
                for i in queue:
                    await js.publish(f"benchraw.conc.{i}", payload, headers=headers())

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return count / (time.perf_counter() - started)

        async def pipelined() -> float:
            started = time.perf_counter()
            futures = [
                await js.publish_async(f"benchraw.pipe.{i}", payload, headers=headers())
                for i in range(count)
            ]
            acks = await asyncio.gather(*futures)
            assert len(acks) == count
            return count / (time.perf_counter() - started)

        return RawRates(await sequential(), await concurrent(), await pipelined(), concurrency)
    finally:
        await nc.close()


async def events_message_size(server: NatsServer) -> float:
    """Mean bytes per message in the product's EVENTS stream (for the baseline's MSG_SIZE)."""
    nc = await server.connect("bench-stream-info", user="operator")
    try:
        info = await nc.jetstream().stream_info("EVENTS")
        return info.state.bytes / info.state.messages if info.state.messages else 0.0
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------------------
# The creates


@dataclass
class Creates:
    sent_at: dict[str, float] = field(default_factory=dict)  # instance id -> POST sent
    owner: dict[str, int] = field(default_factory=dict)  # instance id -> user index
    latency_s: list[float] = field(default_factory=list)  # every response
    running_s: dict[str, float] = field(default_factory=dict)  # instance id -> sent -> RUNNING
    statuses: Counter[int] = field(default_factory=Counter)
    no_capacity: int = 0
    # "<status> <error message>" -> how many answers said it (every non-201)
    failures: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    all_running_s: float = 0.0

    @property
    def created(self) -> int:
        return self.statuses[201]


def create_body(i: int) -> dict[str, Any]:
    return {"name": f"bench-{i}", "gpuTypeId": GPU_TYPE, "templateId": TEMPLATE, "gpuCount": 1}


async def poll_db(conninfo: str, result: Creates, done: asyncio.Event, interval_s: float) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            finished = done.is_set()
            pending = [i for i in result.sent_at if i not in result.running_s]
            if pending:
                cur = await conn.execute(
                    "SELECT id FROM instances WHERE id = ANY(%s) AND doc->>'status' = 'RUNNING'",
                    (pending,),
                )
                now = time.perf_counter()
                for (instance_id,) in await cur.fetchall():
                    result.running_s[instance_id] = now - result.sent_at[instance_id]
            if finished and len(result.running_s) >= len(result.sent_at):
                return
            await asyncio.sleep(interval_s)


async def poll_api(
    client: httpx.AsyncClient,
    tokens: list[str],
    result: Creates,
    done: asyncio.Event,
    interval_s: float,
) -> None:
    while True:
        finished = done.is_set()
        users = sorted({result.owner[i] for i in result.sent_at if i not in result.running_s})
        for user in users:
            page: str | None = "/instances"
            while page is not None:
                response = await client.get(
                    page, headers={"Authorization": f"Bearer {tokens[user]}"}
                )
                now = time.perf_counter()
                if response.status_code != 200:
                    break
                for item in response.json():
                    iid = item["id"]
                    if item["status"] == "RUNNING" and iid in result.sent_at:
                        result.running_s.setdefault(iid, now - result.sent_at[iid])
                page = response.links.get("next", {}).get("url")
        if finished and len(result.running_s) >= len(result.sent_at):
            return
        await asyncio.sleep(interval_s)


async def run_creates(
    url: str, conninfo: str, tokens: list[str], args: argparse.Namespace
) -> Creates:
    result = Creates()
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=64)
    timeout = httpx.Timeout(60.0)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=url, timeout=timeout) as poll_client,
    ):
        numbers = iter(range(args.creates))
        done = asyncio.Event()

        async def worker() -> None:
            for i in numbers:
                user = i % len(tokens)
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/instances",
                        json=create_body(i),
                        headers={"Authorization": f"Bearer {tokens[user]}"},
                    )
                except httpx.HTTPError as exc:
                    result.statuses[0] += 1
                    result.failures[f"0 {type(exc).__name__}: {exc}"] += 1
                    continue
                result.latency_s.append(time.perf_counter() - sent)
                result.statuses[response.status_code] += 1
                if response.status_code == 201:
                    instance_id = response.json()["id"]
                    result.sent_at[instance_id] = sent
                    result.owner[instance_id] = user
                else:
                    try:
                        message = response.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = response.text[:200]
                    if response.status_code == 409 and "no capacity" in message:
                        result.no_capacity += 1
                    result.failures[f"{response.status_code} {message}"] += 1

        if args.poll == "api":
            poller = asyncio.create_task(
                poll_api(poll_client, tokens, result, done, args.poll_interval)
            )
        else:
            poller = asyncio.create_task(poll_db(conninfo, result, done, args.poll_interval))
        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            result.wall_s = time.perf_counter() - started
            done.set()
            await asyncio.wait_for(poller, args.running_timeout)
            result.all_running_s = time.perf_counter() - started
        except TimeoutError:
            result.errors.append(
                f"{len(result.sent_at) - len(result.running_s)} instance(s) not RUNNING"
                f" {args.running_timeout:g}s after the last create"
            )
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    return result


# ---------------------------------------------------------------------------------------------
# Checks on the read models


@dataclass
class Audit:
    hosts: int = 0
    gpus: int = 0
    allocated: int = 0
    instances: int = 0
    running: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)
        elif len(self.problems) == 20:
            self.problems.append("... (more)")


def audit_allocations(conninfo: str) -> Audit:
    audit = Audit()
    with psycopg.connect(conninfo) as conn:
        hosts = {r[0]: r[1] for r in conn.execute("SELECT id, doc FROM hosts").fetchall()}
        instances = {
            r[0]: r[1] for r in conn.execute("SELECT id, doc FROM instances WHERE NOT deleted")
        }
    audit.hosts, audit.instances = len(hosts), len(instances)
    holder: dict[str, str] = {}  # gpu uuid -> instance id (over every host)
    for host_id, host in hosts.items():
        own = {g["uuid"] for g in host["gpus"]}
        audit.gpus += len(own)
        for gpu_uuid, lease in host.get("allocations", {}).items():
            audit.allocated += 1
            if gpu_uuid not in own:
                audit.problem(f"host {host_id} allocates {gpu_uuid}, not one of its GPUs")
            if gpu_uuid in holder:
                audit.problem(f"GPU {gpu_uuid} held by {holder[gpu_uuid]} and {lease}")
            holder[gpu_uuid] = lease["instance_id"]
            instance = instances.get(lease["instance_id"])
            if instance is None:
                audit.problem(f"{host_id}/{gpu_uuid} leased to unknown {lease['instance_id']}")
            elif instance["lease_id"] != lease["lease_id"] or instance["host_id"] != host_id:
                audit.problem(f"{host_id}/{gpu_uuid}: lease {lease} != instance's")
    claimed: dict[str, str] = {}  # gpu uuid -> instance id, from the instances' side
    for instance_id, inst in instances.items():
        audit.running += inst["status"] == "RUNNING"
        for gpu_uuid in inst["gpu_uuids"]:
            if gpu_uuid in claimed:
                audit.problem(f"GPU {gpu_uuid} claimed by {claimed[gpu_uuid]} and {instance_id}")
            claimed[gpu_uuid] = instance_id
        if inst["status"] == "RUNNING":
            host = hosts.get(inst["host_id"])
            held = sorted(
                u
                for u, lease in (host or {}).get("allocations", {}).items()
                if lease["instance_id"] == instance_id
            )
            if held != sorted(inst["gpu_uuids"]) or len(held) != inst["gpu_count"]:
                audit.problem(
                    f"RUNNING {instance_id} has {inst['gpu_uuids']} but {inst['host_id']}"
                    f" holds {held} for it"
                )
    return audit


def settled_audit(conninfo: str, expected: int, timeout_s: float = 30.0) -> Audit:
    """The read models lag the event store by a moment: audit until at least `expected` GPUs are
    allocated and every live instance is RUNNING (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        audit = audit_allocations(conninfo)
        if audit.allocated >= expected and audit.running == audit.instances == audit.allocated:
            return audit
        if time.monotonic() > deadline:
            return audit
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--gpus-per-host", type=int, default=8)
    parser.add_argument("--creates", type=int, default=None, help="default: hosts x GPUs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--poll", choices=["db", "api"], default="db")
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--running-timeout", type=float, default=300.0)
    parser.add_argument("--msg-size", type=int, default=900, help="baseline message bytes")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    capacity = args.hosts * args.gpus_per_host
    if args.creates is None:
        args.creates = capacity
    sigterm_as_interrupt()
    workdir = make_workdir("placement")
    host_prefix = f"bench-{os.getpid()}"
    stack = RoleStack(
        workdir,
        [
            "--simulate-hosts", str(args.hosts),
            "--gpus", f"{GPU_TYPE}:{args.gpus_per_host}",
            "--runtime", "simulated",
            "--host-id", host_prefix,
        ],
    )  # fmt: skip
    ok = False
    try:
        print(machine_line(), flush=True)
        print(f"workdir: {workdir}", flush=True)
        stack.start_servers()
        print(f"baseline: {args.creates} raw JetStream publishes...", flush=True)
        raw = asyncio.run(
            raw_publish_rates(stack.nats, args.creates, args.msg_size, args.concurrency)
        )
        print("starting deciders, projector, api...", flush=True)
        stack.start_control_plane()
        started = time.monotonic()
        stack.start_agent()
        tokens = [signup(stack.url, f"placement{u}") for u in range(args.users)]
        for token in tokens:
            fund(stack.url, token)
        ready_s = wait_for_capacity(stack, tokens[0], GPU_TYPE, capacity, timeout_s=600)
        print(
            f"fleet ready: {args.hosts} hosts x {args.gpus_per_host} GPUs registered and visible"
            f" in {time.monotonic() - started:.1f}s after the agent started"
            f" ({ready_s:.1f}s after the first user signed up)",
            flush=True,
        )
        print(
            f"creating {args.creates} instances, {args.concurrency} in flight,"
            f" {args.users} users...",
            flush=True,
        )
        result = asyncio.run(run_creates(stack.url, stack.database_url, tokens, args))
        stack.check_alive()
        extra_status, extra_body = http_json(
            "POST", f"{stack.url}/instances", create_body(args.creates), token=tokens[0]
        )
        audit = settled_audit(stack.database_url, result.created + int(extra_status == 201))
        event_size = asyncio.run(events_message_size(stack.nats))
        ok = report(args, capacity, raw, result, audit, extra_status, extra_body, event_size)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stack.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            remove_workdir(workdir)
    return 0 if ok else 1


def report(
    args: argparse.Namespace,
    capacity: int,
    raw: RawRates,
    result: Creates,
    audit: Audit,
    extra_status: int,
    extra_body: Any,
    event_size: float,
) -> bool:
    rate = result.created / result.wall_s if result.wall_s else 0.0
    lat_ms = [x * 1000 for x in result.latency_s]
    run_ms = [x * 1000 for x in result.running_s.values()]
    extra_message = extra_body.get("error", {}).get("message", "") if extra_body else ""
    full = result.created >= capacity
    extra_ok = extra_status == 409 and "no capacity" in extra_message if full else True
    no_double = not audit.problems
    # A 503 ("the deciders did not answer in time; may or may not have been applied") can hide
    # a placement that happened: the read models, not the 201s, are the truth for the audit.
    counts_ok = audit.allocated == audit.instances == audit.running
    hidden = audit.instances - result.created - int(extra_status == 201)
    if args.creates <= capacity:
        all_placed = result.created == args.creates and result.no_capacity == 0
    else:
        all_placed = result.created == capacity
    print()
    print(f"== placement: {args.hosts} hosts x {args.gpus_per_host} {GPU_TYPE}, {args.creates}"
          f" creates, {args.concurrency} in flight, {args.users} users ==")  # fmt: skip
    print(f"  statuses: {dict(sorted(result.statuses.items()))}; 409 no capacity:"
          f" {result.no_capacity}; wall {result.wall_s:.2f}s")  # fmt: skip
    print(
        f"  placements/s:            {rate:8.1f}   (goal >= {GOAL_PLACEMENTS_PER_S:.0f}:"
        f" {verdict(rate >= GOAL_PLACEMENTS_PER_S)})"
    )
    worst = max(lat_ms, default=float("nan"))
    print(f"  create latency ms:       p50 {percentile(lat_ms, 50):7.1f}   p99"
          f" {percentile(lat_ms, 99):7.1f}   max {worst:7.1f}")  # fmt: skip
    print(
        f"  create->RUNNING ms:      p50 {percentile(run_ms, 50):7.1f}   p99"
        f" {percentile(run_ms, 99):7.1f}   ({len(run_ms)}/{result.created} seen RUNNING,"
        f" poll {args.poll} every {args.poll_interval * 1000:.0f} ms; all RUNNING"
        f" {result.all_running_s:.1f}s after the first POST)"
    )
    shown = f"{extra_status} {extra_message[:90]!r}"
    print(f"  create #{args.creates + 1} on the full fleet: {shown}  "
          f"{verdict(extra_ok) if full else '(fleet not full: not judged)'}")  # fmt: skip
    print(f"  read models: {audit.hosts} hosts, {audit.gpus} GPUs, {audit.allocated} allocated,"
          f" {audit.instances} live instances, {audit.running} RUNNING")  # fmt: skip
    print(f"  no double allocation / every RUNNING holds exactly its GPUs: {verdict(no_double)}")
    print(f"  allocated GPUs == live instances == RUNNING: {verdict(counts_ok)}")
    print(f"  every create answered 201 and placed: {verdict(all_placed and hidden == 0)}"
          f" ({hidden} instance(s) placed although their POST did not answer 201)")  # fmt: skip
    for line in audit.problems + result.errors:
        print(f"    ! {line}")
    for text, count in result.failures.most_common(10):
        print(f"    ! {count} x {text}")
    if result.no_capacity and audit.allocated < capacity:
        print(f"    ! {result.no_capacity} create(s) answered 409 no capacity although"
              f" {capacity - audit.allocated} GPU(s) are still free")  # fmt: skip
    print()
    print(f"== baseline: raw JetStream publish with ack, same nats-server (fsync always),"
          f" {args.creates} x {args.msg_size} B (product events here average"
          f" {event_size:.0f} B) ==")  # fmt: skip
    print(f"  sequential await js.publish:      {raw.sequential:8.1f} msg/s")
    print(f"  {raw.concurrency} concurrent publishers:         {raw.concurrent:8.1f} msg/s")
    print(f"  pipelined publish_async:          {raw.pipelined:8.1f} msg/s")
    ratio = rate / raw.sequential if raw.sequential else 0.0
    print(
        f"  ratio placements/s / sequential publishes/s = {ratio:.3f}"
        f"  (vs {raw.concurrency} concurrent: {rate / raw.concurrent:.3f})"
    )
    print("  (a placement appends >= 2 fsynced events -- GpusAllocated, InstanceCreated -- and the")
    print("   agent appends 2 more -- provisioning, running -- while later creates run)")
    return extra_ok and no_double and counts_ok and all_placed and hidden == 0


if __name__ == "__main__":
    sys.exit(main())
