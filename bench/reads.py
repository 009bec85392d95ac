"""Read throughput: GET /templates or GET /instances (50 items) on the full stack vs bare Litestar.

    .venv/bin/python bench/reads.py [--path templates|instances] [--duration 10]
                                    [--connections 32] [--warmup 3] [--auth token|api-key]

Full stack: `gpuworker up` (embedded PostgreSQL + nats-server, api/deciders/projector roles) in a
temp dir; one user with 46 own templates, so the list holds exactly 50 (4 built-in + 46), or
(`--path instances`) 50 instances of one GPU each on the simulated runtime: the list every console
and CLI polls, not cached.
Baseline: bench/baseline_app.py reads -- the same 50 items as the product's TemplateOut Structs
from memory, same uvicorn settings. Both are measured with the same `wrk -t1 -cN -dDs`, one after
the other (the stack is stopped first, so the baseline runs on a quiet machine). `--auth api-key`
sends an API key (POST /api-keys) instead of the access token: what a script or SDK pays."""

from __future__ import annotations

import argparse
import json
import sys

from benchlib import (
    CpuMeter,
    PythonServer,
    Stack,
    WrkResult,
    http_json,
    http_raw,
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

ITEMS = 50
BUILT_IN = 4
GOAL_RATIO = 0.5
INSTANCE_GPU = "NVIDIA GeForce RTX 4090"


def create_templates(url: str, token: str, count: int) -> None:
    for i in range(count):
        status, body = http_json(
            "POST",
            f"{url}/templates",
            {
                "name": f"bench template {i:02d}",
                "imageName": f"ghcr.io/bench/image-{i:02d}:latest",
                "dockerStartCmd": "python -m http.server 8888",
                "containerDiskInGb": 40,
                "volumeInGb": 100,
                "env": {"MODEL": f"model-{i}", "HF_HOME": "/workspace/hf"},
                "ports": ["8888/http", "22/tcp"],
                "readme": f"Template {i} for the read benchmark.",
            },
            token,
        )
        if status != 201:
            raise RuntimeError(f"POST /templates answered {status}: {body}")


def create_instances(url: str, token: str, count: int) -> None:
    for i in range(count):
        status, body = http_json(
            "POST",
            f"{url}/instances",
            {
                "name": f"bench instance {i:02d}",
                "gpuTypeId": INSTANCE_GPU,
                "templateId": "busybox-smoke",
                "gpuCount": 1,
            },
            token,
        )
        if status != 201:
            raise RuntimeError(f"POST /instances answered {status}: {body}")


def create_api_key(url: str, token: str) -> str:
    status, body = http_json("POST", f"{url}/api-keys", {"name": "bench reads"}, token)
    if status != 201:
        raise RuntimeError(f"POST /api-keys answered {status}: {body}")
    key: str = body["key"]
    return key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--auth", choices=["token", "api-key"], default="token")
    parser.add_argument("--path", choices=["templates", "instances"], default="templates")
    args = parser.parse_args()
    sigterm_as_interrupt()

    workdir = make_workdir("reads")
    gpus = ["--gpus", f"{INSTANCE_GPU}:{ITEMS}"] if args.path == "instances" else []
    stack = Stack(workdir, up_args=gpus)
    baseline: PythonServer | None = None
    try:
        print(f"[reads] starting gpuworker up in {workdir} ...", flush=True)
        stack.start()
        token = signup(stack.url, "reads")
        if args.path == "instances":
            create_instances(stack.url, token, ITEMS)
        else:
            create_templates(stack.url, token, ITEMS - BUILT_IN)
        if args.auth == "api-key":
            token = create_api_key(stack.url, token)
        status, body = http_raw(f"{stack.url}/{args.path}", token)
        items = json.loads(body)
        public = sum(1 for t in items if t.get("isPublic"))
        expected_public = BUILT_IN if args.path == "templates" else 0
        if status != 200 or len(items) != ITEMS or public != expected_public:
            raise RuntimeError(
                f"GET /{args.path}: status {status}, {len(items)} items ({public} public);"
                f" expected {ITEMS} ({expected_public} public)"
            )
        print(f"[reads] verified: GET /{args.path} -> {len(items)} items, {len(body)} bytes")
        script = lua_script(token)
        target = f"{stack.url}/{args.path}"
        if args.warmup:
            run_wrk("warm-up", target, script, workdir, args.connections, args.warmup)
        full = run_wrk(
            "full stack",
            target,
            script,
            workdir,
            args.connections,
            args.duration,
            meter=stack.meter(),
        )
        print(f"[reads] full stack: {full.rps:.1f} req/s", flush=True)
        stack.stop()

        items_file = workdir / "items.json"
        items_file.write_bytes(body)
        baseline = PythonServer(workdir, ["reads", "--items", str(items_file), "--path", args.path])
        baseline.start()
        b_status, b_body = http_raw(f"{baseline.url}/{args.path}")
        same = b_status == 200 and json.loads(b_body) == items
        print(
            f"[reads] baseline serves {len(json.loads(b_body))} items, {len(b_body)} bytes,"
            f" identical JSON: {same}"
        )
        if not same:
            raise RuntimeError("the baseline does not serve the same items")
        target = f"{baseline.url}/{args.path}"
        if args.warmup:
            run_wrk("warm-up", target, script, workdir, args.connections, args.warmup)
        bare = run_wrk(
            "bare Litestar",
            target,
            script,
            workdir,
            args.connections,
            args.duration,
            meter=CpuMeter(baseline.pids),
        )
        baseline.stop()
        baseline = None
    finally:
        if baseline is not None:
            baseline.stop()
        stack.stop()
        remove_workdir(workdir)

    report(full, bare, args, len(body))
    return 0


def report(full: WrkResult, bare: WrkResult, args: argparse.Namespace, size: int) -> None:
    ratio = full.rps / bare.rps if bare.rps else 0.0
    clean = full.non2xx == 0 and full.socket_errors == 0
    print()
    print("=" * 100)
    print(f"BENCH reads: GET /{args.path}, {ITEMS} items ({size} bytes JSON), auth: {args.auth}")
    print(
        f"  wrk -t1 -c{args.connections} -d{args.duration}s --latency"
        f" (after a {args.warmup}s warm-up each); {machine_line()}"
    )
    print(wrk_table([full, bare]))
    print(
        "  CPU ms/req: CPU time of every server process (full stack: api, deciders, projector,"
        " nats-server, PostgreSQL) per request -- steadier than req/s on a busy machine"
    )
    print(
        f"  ratio full/bare req/s: {ratio:.3f}x   goal >= {GOAL_RATIO}x   ->"
        f" {verdict(ratio >= GOAL_RATIO and clean)}"
        + ("" if clean else "  (full stack had non-2xx or socket errors)")
    )
    f_cpu, b_cpu = full.cpu_ms_per_request, bare.cpu_ms_per_request
    if f_cpu and b_cpu:
        print(f"  CPU per request full/bare: {f_cpu / b_cpu:.2f}x (info)")
    print("=" * 100)


if __name__ == "__main__":
    sys.exit(main())
