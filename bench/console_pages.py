"""Console page time: the dashboard and the instance list with 50 instances, beside the REST
`GET /instances` they are built on, in the same run; and each page's weight.

    .venv/bin/python bench/console_pages.py [--instances 50] [--requests 200] [--warmup 20]

`gpuworker up` on the simulated runtime with enough GPUs; one user with `--instances` instances.
Each URL is requested `--requests` times in turn (round-robin, one keep-alive connection, so the
three see the same machine load) after `--warmup` rounds; the time is from sending the request to
the last byte of the answer on loopback, which is the server's time plus a few tens of µs. Page
weight: the page's HTML and every stylesheet and script it links (uncompressed; the console has no
images or fonts). Goals (issue 13): p95 <= 50 ms for both pages; weight <= 300 kB."""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import time
from urllib.parse import urlsplit

from benchlib import (
    Stack,
    fund,
    http_json,
    machine_line,
    make_workdir,
    remove_workdir,
    sigterm_as_interrupt,
    verdict,
)

GOAL_P95_MS = 50.0
GOAL_WEIGHT_KB = 300.0
GPU = "NVIDIA GeForce RTX 4090"
PAGES = {"dashboard": "/console/", "instance list": "/console/instances"}
REST = "/instances"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    sigterm_as_interrupt()

    workdir = make_workdir("console")
    gpus = f"{GPU}:{args.instances + 8}"
    stack = Stack(workdir, up_args=["--runtime", "simulated", "--gpus", gpus])
    try:
        print(f"[console] starting gpuworker up in {workdir} ...", flush=True)
        stack.start()
        status, body = http_json(
            "POST",
            f"{stack.url}/auth/signup",
            {
                "name": "bench console",
                "email": "console@bench.example.com",
                "password": "pw-12345678",
            },
        )
        if status != 201:
            raise RuntimeError(f"signup answered {status}: {body}")
        token, session = body["access_token"], body["refresh_token"]
        fund(stack.url, token)
        for i in range(args.instances):
            status, body = http_json(
                "POST",
                f"{stack.url}/instances",
                {"name": f"bench-{i:02d}", "gpuTypeId": GPU, "templateId": "busybox-smoke"},
                token,
            )
            if status != 201:
                raise RuntimeError(f"POST /instances answered {status}: {body}")
        # The list must show them all before anything is timed.
        deadline = time.monotonic() + 60
        while True:
            status, listed = http_json("GET", f"{stack.url}/instances?limit=500", token=token)
            if status == 200 and len(listed) == args.instances:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET /instances holds {len(listed or [])} instances")
            time.sleep(0.2)

        host = urlsplit(stack.url)
        conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=30)
        headers = {
            "page": {"cookie": f"gpw_session={session}"},
            "rest": {"authorization": f"Bearer {token}"},
        }

        def get(path: str, kind: str) -> tuple[float, bytes]:
            started = time.perf_counter()
            conn.request("GET", path, headers=headers[kind])
            response = conn.getresponse()
            data = response.read()
            took = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"GET {path} answered {response.status}: {data[:300]!r}")
            return took, data

        targets = [(name, path, "page") for name, path in PAGES.items()]
        targets.append((f"GET {REST} (REST)", REST, "rest"))
        times: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for round_ in range(args.warmup + args.requests):
            for name, path, kind in targets:
                took, _ = get(path, kind)
                if round_ >= args.warmup:
                    times[name].append(took)

        weights: dict[str, int] = {}
        for name, path in PAGES.items():
            _, html = get(path, "page")
            assets = set(re.findall(rb'(?:href|src)="(/static/[^"]+)"', html))
            weights[name] = len(html) + sum(len(get(a.decode(), "page")[1]) for a in assets)
        conn.close()
    finally:
        stack.stop()
        remove_workdir(workdir)

    print()
    print("=" * 100)
    print(f"BENCH console pages: {args.instances} instances, {args.requests} requests each")
    print(f"  {machine_line()}")
    print(f"  {'':28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    ok = True
    for name, values in times.items():
        p95 = percentile(values, 0.95)
        line = (
            f"  {name:28} {percentile(values, 0.5):8.2f} {p95:8.2f} {percentile(values, 0.99):8.2f}"
        )
        if name in PAGES:
            ok = ok and p95 <= GOAL_P95_MS
            line += f"   goal p95 <= {GOAL_P95_MS:.0f} ms -> {verdict(p95 <= GOAL_P95_MS)}"
        print(line)
    for name, size in weights.items():
        kb = size / 1000
        ok = ok and kb <= GOAL_WEIGHT_KB
        print(
            f"  {name} weight: {kb:.1f} kB   goal <= {GOAL_WEIGHT_KB:.0f} kB"
            f" -> {verdict(kb <= GOAL_WEIGHT_KB)}"
        )
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
