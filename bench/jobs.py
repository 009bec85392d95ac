"""Serverless jobs through the whole stack: run -> worker -> result, with warm workers, beside the
raw JetStream publish + NATS request/reply round trip measured in the same run; and a cold start
on Docker beside `docker run` of the same image.

    .venv/bin/python bench/jobs.py [--jobs 2000] [--concurrency 64] [--no-docker]

Setup (temp dir; every process stopped by PID, every container this run made removed on exit):
one nats-server (fsync always, as `up` runs it) shared by the stack and the raw baseline, and
`gpuworker up --runtime simulated` (then `--runtime docker`, with a host id of its own) on it.

- simulated: an endpoint with workersMin = workersMax = 4 warm simulated workers (each takes 16
  jobs at once: SIMULATED_WORKER_CONCURRENCY, fetched as the SDK does, one job-take-batch for
  its free slots), `--concurrency` clients each looping
  `POST /runsync` ({"input": {"i": n}}, answered once the job is COMPLETED). Jobs/s over the
  whole run and p50/p99 of `delayTime` (queue -> start, as the api reports it).
- raw: the same number of clients each looping a JetStream publish with ack (a file stream) and a
  NATS request answered by a subscriber: the floor of a submit plus a hand-off to a worker.
- appends: the deciders' `gpuworker_event_append_seconds` over the measured run (each job appends
  three events: submitted, taken, completed). With `sync_interval: always` the stream writes and
  flushes each message to disk in turn, so under load this is where a job's time queues.
- unless --no-lazy, [info]: the simulated run and the raw baseline again on a nats-server with its
  default (lazy) fsync, to show what the per-message disk flush costs.
- docker: 3 warm busybox workers (examples/workers/busybox/worker.sh, one job at a time each), the
  same loop with 12 clients; then cold start: a job to the endpoint scaled to zero -> its output
  (runsync answered), 3 times, beside `docker run --rm local/busybox:latest echo` (median).

Goals: >= 500 jobs/s on warm simulated workers, queue-to-start p50 <= 20 ms; cold start <= 1.5x
`docker run`. A MISS is a result, not an error."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import docker
from benchlib import (
    ROOT,
    NatsServer,
    Stack,
    free_port,
    fund,
    http_json,
    http_raw,
    machine_line,
    make_workdir,
    remove_workdir,
    signup,
    sigterm_as_interrupt,
    verdict,
)
from fleet_lib import percentile
from prometheus_client.parser import text_string_to_metric_families

from services.upstream_http import HttpTarget, UpstreamPool

GPU = "NVIDIA GeForce RTX 4090"
IMAGE = "local/busybox:latest"
WORKER_SH = ROOT / "examples" / "workers" / "busybox" / "worker.sh"
LABEL_HOST = "gpuworker.host"
# The last `through` run's per-job times (ms), by what they measure.
THROUGH_DETAIL: dict[str, list[float]] = {}


def api_key(url: str, token: str) -> str:
    status, body = http_json("POST", f"{url}/api-keys", {"name": "bench"}, token=token)
    if status != 201:
        raise RuntimeError(f"POST /api-keys answered {status}: {body}")
    return str(body["key"])


def create(url: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, found = http_json("POST", f"{url}{path}", body, token=token)
    if status != 201:
        raise RuntimeError(f"POST {path} answered {status}: {found}")
    created: dict[str, Any] = found
    return created


def wait_workers(url: str, key: str, endpoint_id: str, idle: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, view = http_json("GET", f"{url}/endpoints/{endpoint_id}", token=key)
        if status == 200 and view["workersIdle"] == idle and not view["workersInitializing"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"endpoint {endpoint_id} never had {idle} idle workers: {view}")


async def through(
    url: str, key: str, endpoint_id: str, jobs: int, concurrency: int
) -> tuple[float, list[float]]:
    """(jobs/s, queue-to-start ms of each job), `concurrency` clients looping /runsync."""
    delays: list[float] = []
    # Where the rest of a job's time goes: its run on the worker, and the whole /runsync.
    THROUGH_DETAIL.clear()
    left = iter(range(jobs))
    # The load comes from the lean HTTP/1.1 client the simulated workers use (services/
    # upstream_http.py), a connection per client: with httpx, the clients' own CPU was a fair
    # share of this 2-core machine's, taken from the stack being measured.
    runsync = HttpTarget.of(f"{url}/endpoints/{endpoint_id}/runsync")
    pool = UpstreamPool(10.0, 120.0, keep_per_target=concurrency)
    headers = [
        runsync.host_header,
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
    ]

    async def loop() -> None:
        for n in left:
            began = time.perf_counter()
            status, content = await pool.call("POST", runsync, headers, b'{"input":{"i":%d}}' % n)
            body = json.loads(content)
            if status != 200 or body.get("status") != "COMPLETED":
                raise RuntimeError(f"job {n}: {status} {body}")
            delays.append(float(body["delayTime"]))
            THROUGH_DETAIL.setdefault("execution", []).append(float(body["executionTime"]))
            THROUGH_DETAIL.setdefault("runsync", []).append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await pool.close()
    elapsed = time.perf_counter() - started
    return jobs / elapsed, delays


async def raw_round_trip(nats: NatsServer, ops: int, concurrency: int) -> tuple[float, float]:
    """(ops/s, p50 ms) of a JetStream publish with ack followed by a NATS request/reply."""
    nc = await nats.connect("bench-jobs-raw")
    js = nc.jetstream(timeout=30)
    stream = f"BENCHJOBS{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])

    async def answer(msg: Any) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe(f"{stream.lower()}-worker", cb=answer)
    took: list[float] = []
    left = iter(range(ops))
    payload = b'{"input":{"i":0}}'

    async def loop() -> None:
        for _ in left:
            began = time.perf_counter()
            await js.publish(f"{stream.lower()}.job", payload)
            await nc.request(f"{stream.lower()}-worker", payload, timeout=10)
            took.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await sub.unsubscribe()
        await js.delete_stream(stream)
        await nc.close()
    return ops / elapsed, percentile(took, 50)


def append_histogram(metrics_url: str) -> dict[float, float]:
    """The deciders' gpuworker_event_append_seconds: cumulative count by upper bound (s)."""
    _status, text = http_raw(metrics_url)
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text.decode())
        if family.name == "gpuworker_event_append_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }


def appends_line(before: dict[float, float], after: dict[float, float], jobs: int) -> str:
    """Appends per job and their p50/p99 (linear within the histogram's buckets)."""
    counts = [(le, after[le] - before.get(le, 0.0)) for le in sorted(after)]
    total = counts[-1][1] if counts else 0.0
    if not total:
        return "event appends: none seen"

    def quantile(q: float) -> float:
        below, lower = 0.0, 0.0
        for le, cumulative in counts:
            if cumulative >= q * total:
                if le == float("inf"):
                    return lower
                share = (q * total - below) / max(cumulative - below, 1e-9)
                return lower + (le - lower) * share
            below, lower = cumulative, le
        return lower

    return (
        f"event appends (JetStream publish -> ack): {total / jobs:.2f} a job;"
        f" p50 {quantile(0.5) * 1000:.1f} ms, p99 {quantile(0.99) * 1000:.1f} ms"
    )


def summary(name: str, rate: float, delays: list[float]) -> str:
    execution, whole = THROUGH_DETAIL.get("execution", [0.0]), THROUGH_DETAIL.get("runsync", [0.0])
    return (
        f"{name}: {rate:8.1f} jobs/s; queue->start p50 {percentile(delays, 50):.0f} ms,"
        f" p99 {percentile(delays, 99):.0f} ms ({len(delays)} jobs); start->done p50"
        f" {percentile(execution, 50):.0f} ms; whole runsync p50 {percentile(whole, 50):.0f} ms"
    )


def account(url: str) -> tuple[str, str]:
    token = signup(url, "jobs")
    fund(url, token)
    return token, api_key(url, token)


def simulated(
    workdir: Path, nats: NatsServer, args: argparse.Namespace, label: str = ""
) -> list[str]:
    metrics_port = free_port()  # the deciders' (`up` gives the other roles the ports above it)
    stack = Stack(
        workdir,
        nats,
        up_args=["--runtime", "simulated", "--gpus", f"{GPU}:{args.workers}"],
        env={"GPUWORKER_METRICS_PORT": str(metrics_port)},
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    stack.workdir.mkdir()
    stack.start()
    lines: list[str] = []
    try:
        _token, key = account(stack.url)
        endpoint = create(
            stack.url,
            key,
            "/endpoints",
            {
                "name": "bench-sim",
                "templateId": "busybox-smoke",
                "gpuIds": GPU,
                "workersMin": args.workers,
                "workersMax": args.workers,
                "env": {"SIMULATED_WORKER_CONCURRENCY": str(args.takers)},
            },
        )
        wait_workers(stack.url, key, endpoint["id"], args.workers, 60)
        # Warm-up: connections, the read paths' caches.
        asyncio.run(through(stack.url, key, endpoint["id"], 200, args.concurrency))
        appended = append_histogram(metrics_url)
        rate, delays = asyncio.run(
            through(stack.url, key, endpoint["id"], args.jobs, args.concurrency)
        )
        appends = appends_line(appended, append_histogram(metrics_url), args.jobs)
        raw_rate, raw_p50 = asyncio.run(raw_round_trip(nats, args.jobs, args.concurrency))
        name = f"simulated, {args.workers} warm workers x {args.takers} takers"
        lines += [
            summary(f"{label}{name}", rate, delays),
            f"  {appends}",
            f"{label}raw JetStream publish+ack and request/reply: {raw_rate:8.1f} ops/s, p50"
            f" {raw_p50:.1f} ms ({args.jobs} ops, {args.concurrency} clients)",
            f"  jobs/raw: {rate / raw_rate:.2f}"
            + (
                "; not the product's configuration: no goal verdict"
                if label
                else f"; goal >= 500 jobs/s: {verdict(rate >= 500)};"
                f" goal p50 <= 20 ms: {verdict(percentile(delays, 50) <= 20)}"
            ),
        ]
    finally:
        stack.stop()
    return lines


def docker_run_s() -> float:
    began = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", IMAGE, "echo", "cold"], check=True, capture_output=True
    )
    return time.perf_counter() - began


def on_docker(workdir: Path, args: argparse.Namespace) -> list[str]:
    host_id = f"bench-jobs-{uuid.uuid4().hex[:8]}"
    # A nats-server of its own: the simulated run's endpoints stay on the other one.
    nats = NatsServer(workdir / "docker", sync_always=True)
    stack = Stack(
        workdir / "docker",
        nats,
        up_args=["--runtime", "docker", "--gpus", f"{GPU}:4"],
        env={
            "GPUWORKER_HOST_ID": host_id,
            "GPUWORKER_WORKER_PING_INTERVAL": "2",
        },
    )
    stack.workdir.mkdir()
    # Before anything is started: with no Docker engine, nothing is left running.
    client = docker.from_env()
    nats.start()
    os.environ["GPUWORKER_HOST_ID"] = host_id  # the agent's NATS login is made for this host
    lines: list[str] = []
    stack.start()
    try:
        token, key = account(stack.url)
        template = create(
            stack.url,
            token,
            "/templates",
            {
                "name": "bench-busybox-worker",
                "imageName": IMAGE,
                "dockerStartCmd": WORKER_SH.read_text(),
                "containerDiskInGb": 1,
                "volumeInGb": 0,
            },
        )
        warm = create(
            stack.url,
            key,
            "/endpoints",
            {
                "name": "bench-docker",
                "templateId": template["id"],
                "gpuIds": GPU,
                "workersMin": 3,
                "workersMax": 3,
            },
        )
        wait_workers(stack.url, key, warm["id"], 3, 120)
        asyncio.run(through(stack.url, key, warm["id"], 20, 12))
        rate, delays = asyncio.run(through(stack.url, key, warm["id"], args.docker_jobs, 12))
        lines.append(summary("docker, 3 warm busybox workers", rate, delays))
        http_json("DELETE", f"{stack.url}/endpoints/{warm['id']}", token=key)

        cold = create(
            stack.url,
            key,
            "/endpoints",
            {
                "name": "bench-cold",
                "templateId": template["id"],
                "gpuIds": GPU,
                "workersMin": 0,
                "workersMax": 1,
                "idleTimeout": 1,
            },
        )
        colds: list[float] = []
        for n in range(3):
            deadline = time.monotonic() + 60
            while client.containers.list(
                filters={"label": f"{LABEL_HOST}={host_id}"}, ignore_removed=True
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the cold endpoint's worker never stopped")
                time.sleep(0.2)
            began = time.perf_counter()
            status, body = http_json(
                "POST",
                f"{stack.url}/endpoints/{cold['id']}/runsync",
                {"input": {"cold": n}},
                token=key,
                timeout_s=120,
            )
            if status != 200 or body.get("status") != "COMPLETED":
                raise RuntimeError(f"cold job: {status} {body}")
            colds.append(time.perf_counter() - began)
        bare = [docker_run_s() for _ in range(3)]
        ratio = statistics.median(colds) / statistics.median(bare)
        lines += [
            f"cold start (scaled to zero -> output): median {statistics.median(colds):.2f} s"
            f" {[round(c, 2) for c in colds]}; docker run: median {statistics.median(bare):.2f} s",
            f"  cold/docker run: {ratio:.2f}; goal <= 1.5: {verdict(ratio <= 1.5)}",
        ]
    finally:
        stack.stop()
        nats.stop()
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_HOST}={host_id}"}, ignore_removed=True
        ):
            container.remove(force=True)
        for network in client.networks.list(filters={"label": f"{LABEL_HOST}={host_id}"}):
            network.remove()
        client.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--docker-jobs", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="warm simulated workers")
    parser.add_argument("--takers", type=int, default=16, help="jobs each takes at once")
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument(
        "--no-lazy",
        action="store_true",
        help="skip the informational simulated run on a nats-server with its default (lazy) fsync",
    )
    args = parser.parse_args()
    sigterm_as_interrupt()
    workdir = make_workdir("jobs")
    nats = NatsServer(workdir, sync_always=True)
    lines = [machine_line()]
    try:
        nats.start()
        lines += simulated(workdir / "sim", nats, args)
        if not args.no_lazy:
            lazy = NatsServer(workdir / "lazy", sync_always=False)
            (workdir / "lazy").mkdir()
            lazy.start()
            try:
                lines += simulated(workdir / "lazy" / "sim", lazy, args, "[info] lazy fsync: ")
            finally:
                lazy.stop()
        # Shown now: a failure on Docker must not hide them.
        print("\n".join(["=== bench/jobs.py ===", *lines]), flush=True)
        if not args.no_docker:
            print("\n".join(on_docker(workdir, args)))
    finally:
        nats.stop()
        remove_workdir(workdir)


if __name__ == "__main__":
    main()
