"""GETs through the api's instance proxy vs the same GETs straight to the container's published
port, in one run.

    .venv/bin/python bench/proxy.py [--seconds 10] [--connections 16] [--size 10240]

Setup (temp dir; every process stopped by PID, the instance terminated and anything its host
left on Docker removed on exit, Ctrl-C included): embedded nats-server + PostgreSQL,
`gpuworker deciders|projector|api` and `gpuworker agent --runtime docker` (one declared RTX 4090,
a host id of its own). One instance of local/busybox:latest runs `busybox httpd` serving a file
of `--size` bytes on `8080/http`.

Measured with wrk (`-t1`, 2 s warm-up each, then `--seconds`), one after the other:
  direct  GET http://127.0.0.1:<published host port>/f    (Docker's port, no proxy)
  proxy   GET <api>/proxy/<id>/8080/f with the owner's token (auth, owner check, streaming)
Printed: req/s, p50/p90/p99 and the ratio proxy/direct (goal >= 0.5 for 10 kB responses), the
CPU the api spent per proxied request, and the CPU per request of the chain both paths share
(Docker's userland docker-proxy for 127.0.0.1 and the container's httpd with its forked
children): on a shared machine throughput moves with everything else running, CPU per request
far less.

The baseline is in its best configuration: wrk keeps connections alive and pipelines nothing,
but busybox httpd answers `Connection: close` to every request, so a new connection per request
(client -> docker-proxy -> httpd) is the least any client can pay. Through the proxy, wrk's
connection to the api stays alive and the api opens that same new connection to the container
per request (its pool reuses only connections the server keeps alive)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid

import docker
import docker.errors
import psutil
from benchlib import (
    CpuMeter,
    http_json,
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
from fleet_lib import RoleStack

IMAGE = "local/busybox:latest"
GPU_TYPE = "NVIDIA GeForce RTX 4090"
HOST_LABEL = "gpuworker.host"
GOAL = 0.5
UP_S = 90.0


def serve_command(size: int) -> str:
    return (
        "busybox mkdir -p /www"
        f" && busybox dd if=/dev/zero bs={size} count=1 2>/dev/null | busybox tr '\\0' x > /www/f"
        " && exec busybox httpd -f -p 8080 -h /www"
    )


def wait_running(url: str, token: str, instance_id: str) -> dict[str, object]:
    deadline = time.monotonic() + UP_S
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{url}/instances/{instance_id}", token=token)
        if status == 200 and body["status"] == "RUNNING":
            return dict(body)
        if status == 200 and body["status"] == "FAILED":
            raise RuntimeError(f"instance failed: {body['failureReason']}")
        time.sleep(0.2)
    raise TimeoutError(f"instance {instance_id} not RUNNING within {UP_S}s")


def wait_served(url: str, size: int, token: str | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as response:
            if len(response.read()) == size:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not serve {size} bytes")


def docker_proxy_pids(host_port: int) -> list[int]:
    """Docker's userland proxy for the published port (none where Docker uses iptables alone)."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("docker-proxy") and str(host_port) in cmdline:
            pids.append(proc.pid)
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()
    sigterm_as_interrupt()
    run_id = uuid.uuid4().hex[:8]
    host_id = f"bench-proxy-{run_id}"
    workdir = make_workdir("proxy")
    client = docker.from_env()
    client.images.get(IMAGE)  # imported by tests/docker_fixtures.py, or by hand (README)
    stack = RoleStack(
        workdir, ["--runtime", "docker", "--gpus", f"{GPU_TYPE}:1", "--host-id", host_id]
    )
    try:
        stack.start_servers()
        # Instances cost money: the benchmark's user starts with some.
        stack.env["GPUWORKER_SIGNUP_CREDIT"] = "100"
        stack.start_control_plane()
        stack.spawn("ledger", ["ledger"])  # the balance a create is checked against
        stack.start_agent()
        token = signup(stack.url, "proxy")
        status, template = http_json(
            "POST",
            f"{stack.url}/templates",
            {
                "name": f"bench-proxy-{run_id}",
                "imageName": IMAGE,
                "dockerStartCmd": serve_command(args.size),
                "ports": ["8080/http"],
                "containerDiskInGb": 5,
            },
            token=token,
        )
        if status != 201:
            raise RuntimeError(f"template: {status} {template}")
        deadline = time.monotonic() + UP_S
        while True:
            status, created = http_json(
                "POST",
                f"{stack.url}/instances",
                {"name": "bench-proxy", "gpuTypeId": GPU_TYPE, "templateId": template["id"]},
                token=token,
            )
            if status == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the host registers its GPU a moment after the agent starts
        if status != 201:
            raise RuntimeError(f"instance: {status} {created}")
        instance_id = created["id"]
        wait_running(stack.url, token, instance_id)
        container = client.containers.get(f"gpuworker-{instance_id}")
        host_port = int(container.ports["8080/tcp"][0]["HostPort"])
        direct_url = f"http://127.0.0.1:{host_port}/f"
        proxy_url = f"{stack.url}/proxy/{instance_id}/8080/f"
        wait_served(direct_url, args.size)
        wait_served(proxy_url, args.size, token)

        api_pid = next(proc.pid for name, proc in stack.procs if name == "api")
        container.reload()
        chain_pids = [int(container.attrs["State"]["Pid"]), *docker_proxy_pids(host_port)]
        rows = []
        chain_ms = []
        for label, url, script, meter in (
            ("direct", direct_url, lua_script("none"), None),
            ("proxy", proxy_url, lua_script(token), CpuMeter(lambda: [api_pid])),
        ):
            run_wrk(f"{label} warm-up", url, script, workdir, args.connections, 2)
            chain = CpuMeter(lambda: chain_pids)
            chain.start()
            row = run_wrk(label, url, script, workdir, args.connections, args.seconds, meter=meter)
            chain_ms.append(1000 * chain.stop() / max(row.requests, 1))
            rows.append(row)
        direct, proxied = rows
        ratio = proxied.rps / direct.rps if direct.rps else 0.0
        print(machine_line())
        print(f"GET of a {args.size}-byte file, wrk -t1 -c{args.connections} -d{args.seconds}s")
        print(wrk_table(rows))
        print(
            f"proxy/direct throughput: {ratio:.2f} (goal >= {GOAL}) {verdict(ratio >= GOAL)};"
            f" p99 {proxied.p99_ms:.2f} ms vs {direct.p99_ms:.2f} ms"
        )
        print(
            f"CPU per request of the shared chain (docker-proxy + httpd):"
            f" direct {chain_ms[0]:.2f} ms, proxy {chain_ms[1]:.2f} ms"
            f" (+ api {proxied.cpu_ms_per_request or 0:.2f} ms)"
        )
        if proxied.non2xx or proxied.socket_errors:
            print(f"proxy errors: {proxied.non2xx} non-2xx, {proxied.socket_errors} socket")
        http_json("DELETE", f"{stack.url}/instances/{instance_id}", token=token)
        time.sleep(2)
        return 0
    finally:
        stack.stop()
        for leftover in client.containers.list(
            all=True, filters={"label": f"{HOST_LABEL}={host_id}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                leftover.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": f"{HOST_LABEL}={host_id}"}):
            with contextlib.suppress(docker.errors.DockerException):
                network.remove()
        for volume in client.volumes.list(filters={"label": f"{HOST_LABEL}={host_id}"}):
            with contextlib.suppress(docker.errors.DockerException):
                volume.remove(force=True)
        client.close()
        remove_workdir(workdir)


if __name__ == "__main__":
    sys.exit(main())
