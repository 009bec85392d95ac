"""Instance lifecycle on the real Docker runtime vs bare Docker: create, stop, start, delete.

    .venv/bin/python bench/lifecycle.py [--rounds 5] [--poll-interval 0.05] [--no-cli] [--keep]

Setup (temp dir; every process stopped by PID and every container/volume this run made removed
on exit, Ctrl-C included): embedded nats-server (fsync always) + embedded PostgreSQL,
`gpuworker deciders|projector|api` and one `gpuworker agent --runtime docker --gpus
"NVIDIA GeForce RTX 4090:2"` (declared GPUs, so no device requests) with a host id of its own.
Image local/busybox:latest must exist (imported from the host's busybox if missing, as
tests/docker_fixtures.py does).

Each round, GPUWorker through the API (POST, then GET /instances/{id} every POLL seconds):
  create  POST /instances (template busybox-smoke, gpuCount 1) -> GET shows RUNNING
  stop    POST /instances/{id}/stop -> STOPPED
  start   POST /instances/{id}/start (retried on 409 for up to 10 s: GPU release is
          asynchronous) -> RUNNING
  delete  DELETE /instances/{id} -> GET answers 404
then the same steps on bare Docker, in the same round (same machine state):
  SDK     containers.run(image, "sh -c 'sleep 3600'", detach=True) until .status == running;
          stop(timeout=10); start() until running; remove(force=True)
  CLI     docker run -d / docker stop -t 10 / docker start / docker rm -f  (subprocess wall time)
Printed: the median of each step per side, and GPUWorker / bare ratios.

Stop is dominated by a 10 s timeout on every side: the product stops with Docker's 10 s grace
period and the container's PID 1 (`sh -c '... sleep 3600'`) ignores SIGTERM, so Docker waits the
full 10 s and then SIGKILLs; the baselines use the same 10 s timeout so the comparison is fair."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from benchlib import (
    ROOT,
    fund,
    http_json,
    machine_line,
    make_workdir,
    remove_workdir,
    signup,
    sigterm_as_interrupt,
)
from fleet_lib import RoleStack, median

IMAGE = "local/busybox:latest"
TEMPLATE = "busybox-smoke"
GPU_TYPE = "NVIDIA GeForce RTX 4090"
STEPS = ("create", "stop", "start", "delete")
STOP_TIMEOUT_S = 10
BENCH_LABEL = "gpuworker-bench.run"
STEP_TIMEOUT_S = 90.0
START_RETRY_S = 10.0


@dataclass
class Side:
    name: str
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})

    def med(self, step: str) -> float:
        return median(self.times[step])


def ensure_image(client: docker.DockerClient) -> None:
    try:
        client.images.get(IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    sys.path.insert(0, str(ROOT))
    from tests.docker_fixtures import _busybox_rootfs_tar

    repository, _, tag = IMAGE.rpartition(":")
    client.api.import_image_from_data(_busybox_rootfs_tar(), repository=repository, tag=tag)
    client.images.get(IMAGE)


# ---------------------------------------------------------------------------------------------
# GPUWorker


class Api:
    def __init__(self, url: str, token: str, poll_s: float) -> None:
        self.url = url
        self.token = token
        self.poll_s = poll_s

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.url}{path}", body, token=self.token, timeout_s=30)

    def wait_status(self, instance_id: str, wanted: str, started: float) -> float:
        """Seconds from `started` until GET shows `wanted` ("404": until it is gone)."""
        deadline = started + STEP_TIMEOUT_S
        last: Any = None
        while time.perf_counter() < deadline:
            status, body = self.call("GET", f"/instances/{instance_id}")
            if wanted == "404" and status == 404:
                return time.perf_counter() - started
            if status == 200:
                last = body["status"]
                if last == wanted:
                    return time.perf_counter() - started
                if last == "FAILED":
                    raise RuntimeError(f"instance {instance_id} FAILED: {body['failureReason']}")
            time.sleep(self.poll_s)
        raise TimeoutError(f"instance {instance_id} not {wanted} in {STEP_TIMEOUT_S}s (is {last})")

    def round(self, side: Side, n: int) -> None:
        started = time.perf_counter()
        body = {"name": f"lifecycle-{n}", "gpuTypeId": GPU_TYPE, "templateId": TEMPLATE}
        status, created = self.call("POST", "/instances", {**body, "gpuCount": 1})
        if status != 201:
            raise RuntimeError(f"create answered {status}: {created}")
        iid = created["id"]
        side.times["create"].append(self.wait_status(iid, "RUNNING", started))

        started = time.perf_counter()
        status, answer = self.call("POST", f"/instances/{iid}/stop")
        if status != 200:
            raise RuntimeError(f"stop answered {status}: {answer}")
        side.times["stop"].append(self.wait_status(iid, "STOPPED", started))

        started = time.perf_counter()
        while True:
            status, answer = self.call("POST", f"/instances/{iid}/start")
            if status == 200:
                break
            if status != 409 or time.perf_counter() - started > START_RETRY_S:
                raise RuntimeError(f"start answered {status}: {answer}")
            time.sleep(self.poll_s)
        side.times["start"].append(self.wait_status(iid, "RUNNING", started))

        started = time.perf_counter()
        status, answer = self.call("DELETE", f"/instances/{iid}")
        if status != 204:
            raise RuntimeError(f"delete answered {status}: {answer}")
        side.times["delete"].append(self.wait_status(iid, "404", started))


# ---------------------------------------------------------------------------------------------
# Bare Docker


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def wait_running(container: Any, started: float) -> float:
    deadline = started + STEP_TIMEOUT_S
    while time.perf_counter() < deadline:
        container.reload()
        if container.status == "running":
            return time.perf_counter() - started
        time.sleep(0.005)
    raise TimeoutError(f"container {container.name} not running in {STEP_TIMEOUT_S}s")


def sdk_round(client: docker.DockerClient, side: Side, run_id: str, n: int) -> None:
    started = time.perf_counter()
    container = client.containers.run(
        IMAGE,
        "sh -c 'sleep 3600'",
        detach=True,
        name=f"gpuw-bench-sdk-{run_id}-{n}",
        labels={BENCH_LABEL: run_id},
    )
    try:
        side.times["create"].append(wait_running(container, started))
        elapsed, _ = timed(lambda: container.stop(timeout=STOP_TIMEOUT_S))
        side.times["stop"].append(elapsed)
        started = time.perf_counter()
        container.start()
        side.times["start"].append(wait_running(container, started))
        elapsed, _ = timed(lambda: container.remove(force=True))
        side.times["delete"].append(elapsed)
    except BaseException:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
        raise


def docker_cli(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=STEP_TIMEOUT_S)
    return time.perf_counter() - started


def cli_round(side: Side, run_id: str, n: int) -> None:
    name = f"gpuw-bench-cli-{run_id}-{n}"
    try:
        label = f"{BENCH_LABEL}={run_id}"
        run = ["run", "-d", "--name", name, "--label", label, IMAGE, "sh", "-c", "sleep 3600"]
        side.times["create"].append(docker_cli(*run))
        side.times["stop"].append(docker_cli("stop", "-t", str(STOP_TIMEOUT_S), name))
        side.times["start"].append(docker_cli("start", name))
        side.times["delete"].append(docker_cli("rm", "-f", name))
    except BaseException:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)
        raise


def cleanup_docker(client: docker.DockerClient, run_id: str, host_id: str) -> int:
    """Remove the containers and volumes this run made (by our labels only). Never raises."""
    removed = 0
    filters = [{"label": f"{BENCH_LABEL}={run_id}"}, {"label": f"gpuworker.host={host_id}"}]
    for flt in filters:
        try:
            for container in client.containers.list(all=True, filters=flt):
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                    removed += 1
            for volume in client.volumes.list(filters=flt):
                with contextlib.suppress(docker.errors.DockerException):
                    volume.remove(force=True)
        except docker.errors.DockerException as exc:
            print(f"warning: docker cleanup ({flt}): {exc}", file=sys.stderr)
    return removed


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--no-cli", action="store_true", help="skip the docker CLI baseline")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    sigterm_as_interrupt()
    client = docker.from_env(timeout=120)
    client.ping()
    ensure_image(client)
    run_id = uuid.uuid4().hex[:8]
    host_id = f"bench-lifecycle-{os.getpid()}-{run_id}"
    workdir = make_workdir("lifecycle")
    stack = RoleStack(
        workdir,
        ["--runtime", "docker", "--gpus", f"{GPU_TYPE}:2", "--host-id", host_id],
    )
    sides = [Side("GPUWorker"), Side("docker SDK")]
    if not args.no_cli:
        sides.append(Side("docker CLI"))
    try:
        print(machine_line(), flush=True)
        print(f"workdir: {workdir}", flush=True)
        stack.start()
        token = signup(stack.url, "lifecycle")
        fund(stack.url, token)
        api = Api(stack.url, token, args.poll_interval)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the agent registers its host
            stack.check_alive()
            status, body = api.call("GET", "/gpu-types")
            if status == 200 and any(
                a["available"] >= 2 for g in body if g["id"] == GPU_TYPE for a in g["availability"]
            ):
                break
            time.sleep(0.2)
        else:
            raise TimeoutError("the docker agent's host never showed 2 free GPUs")
        for n in range(args.rounds):
            api.round(sides[0], n)
            sdk_round(client, sides[1], run_id, n)
            if not args.no_cli:
                cli_round(sides[2], run_id, n)
            print(
                f"round {n + 1}/{args.rounds}: "
                + "; ".join(
                    f"{s.name} " + "/".join(f"{s.times[k][-1]:.2f}" for k in STEPS) for s in sides
                )
                + "  (create/stop/start/delete s)",
                flush=True,
            )
        report(sides, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stack.stop()
        left = cleanup_docker(client, run_id, host_id)
        if left:
            print(f"removed {left} left-over container(s)")
        client.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            remove_workdir(workdir)
    return 0


def report(sides: list[Side], args: argparse.Namespace) -> None:
    product, bares = sides[0], sides[1:]
    print()
    print(f"== lifecycle: median of {args.rounds} round(s), seconds ==")
    head = f"  {'step':<8}{product.name:>12}" + "".join(f"{b.name:>12}" for b in bares)
    head += "".join(f"{'ratio ' + b.name.split()[-1]:>13}" for b in bares)
    print(head)
    for step in STEPS:
        line = f"  {step:<8}{product.med(step):>12.3f}"
        line += "".join(f"{b.med(step):>12.3f}" for b in bares)
        line += "".join(f"{product.med(step) / b.med(step):>13.2f}" for b in bares)
        print(line)
    print(
        f"  GPUWorker times run from the request to the first GET (every"
        f" {args.poll_interval * 1000:.0f} ms) showing the new state; bare times are the SDK call"
        " (+ reload until running) or the CLI process."
    )
    print(
        f"  stop: every side uses a {STOP_TIMEOUT_S} s timeout and the container's PID 1 (sh)"
        f" ignores SIGTERM, so each stop waits ~{STOP_TIMEOUT_S} s before SIGKILL."
    )


if __name__ == "__main__":
    sys.exit(main())
