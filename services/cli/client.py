"""The customer's command line (like runpodctl): `gpuworker login`, `gpuworker instances …`.

Talks to the HTTP API only. The access token is kept in ~/.config/gpuworker/credentials.json
(0600); GPUWORKER_API_URL and GPUWORKER_TOKEN override it (an API key serves as GPUWORKER_TOKEN)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
VOLUME_COLUMNS = (
    ("id", "ID"),
    ("name", "NAME"),
    ("status", "STATUS"),
    ("size", "GB"),
    ("dataCenterId", "DC"),
    ("costPerMonth", "$/MONTH"),
    ("attachedInstances", "ATTACHED"),
)
API_KEY_COLUMNS = (("id", "ID"), ("name", "NAME"), ("createdAt", "CREATED"))
ENDPOINT_COLUMNS = (
    ("id", "ID"),
    ("name", "NAME"),
    ("gpuIds", "GPU TYPES"),
    ("workersMin", "MIN"),
    ("workersMax", "MAX"),
    ("workersRunning", "RUNNING"),
    ("workersIdle", "IDLE"),
    ("workersInitializing", "STARTING"),
    ("workersUnhealthy", "UNHEALTHY"),
    ("jobsInQueue", "QUEUED"),
    ("jobsInProgress", "IN PROGRESS"),
    ("version", "VERSION"),
)
JOB_COLUMNS = (
    ("id", "ID"),
    ("status", "STATUS"),
    ("delayTime", "DELAY MS"),
    ("executionTime", "EXECUTION MS"),
    ("workerId", "WORKER"),
)
COLUMNS = (
    ("id", "ID"),
    ("name", "NAME"),
    ("status", "STATUS"),
    ("gpuCount", "GPUS"),
    ("gpuTypeId", "GPU TYPE"),
    ("dataCenterId", "DC"),
    ("costPerHr", "$/HR"),
)


def _credentials_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "gpuworker" / "credentials.json"


def _load() -> dict[str, str]:
    path = _credentials_path()
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if os.environ.get("GPUWORKER_API_URL"):
        saved["url"] = os.environ["GPUWORKER_API_URL"]
    if os.environ.get("GPUWORKER_TOKEN"):
        saved["access_token"] = os.environ["GPUWORKER_TOKEN"]
    saved.setdefault("url", DEFAULT_URL)
    return saved


def _save(data: dict[str, str]) -> None:
    path = _credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


class ApiError(Exception):
    pass


def _headers(creds: dict[str, str]) -> dict[str, str]:
    if creds.get("access_token"):
        return {"authorization": f"Bearer {creds['access_token']}"}
    return {}


def _refuse_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise ApiError(f"{response.status_code}: {message}")


def _send(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    creds = _load()
    try:
        response = httpx.request(
            method, url, json=body, params=params, headers=_headers(creds), timeout=30
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach {creds['url']}: {exc}") from exc
    _refuse_error(response)
    return response


def get_json(path: str, params: dict[str, str] | None = None) -> Any:
    """GET a route of the API with the saved login; its JSON body."""
    return _send("GET", _load()["url"] + path, params=params).json()


def download(path: str, params: dict[str, str], sink: BinaryIO) -> int:
    """Stream a route's body into `sink` as it arrives; returns the bytes written."""
    creds = _load()
    written = 0
    try:
        with httpx.stream(
            "GET", creds["url"] + path, params=params, headers=_headers(creds), timeout=30
        ) as response:
            if response.status_code >= 400:
                response.read()
                _refuse_error(response)
            for chunk in response.iter_bytes():
                sink.write(chunk)
                written += len(chunk)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach {creds['url']}: {exc}") from exc
    return written


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = _send(method, _load()["url"] + path, body)
    return response.json() if response.content else None


def list_all(path: str) -> list[Any]:
    """Every item of a paged list: follows `Link: <…>; rel="next"` to the last page. Only links to
    the API's own origin are followed, since each request carries the access token."""
    base = urlsplit(_load()["url"])
    url: str | None = _load()["url"] + path
    items: list[Any] = []
    while url is not None:
        response = _send("GET", url)
        items += response.json()
        link = response.links.get("next", {}).get("url")
        url = urljoin(url, link) if link else None
        if url is not None and urlsplit(url)[:2] != base[:2]:
            raise ApiError(f"the API sent a next page on another origin ({url}); not following it")
    return items


def table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    def cell(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    cells = [[cell(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [
        max([len(title)] + [len(r[i]) for r in cells]) for i, (_, title) in enumerate(columns)
    ]
    lines = ["  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _print(result: Any, as_json: bool, columns: tuple[tuple[str, str], ...] = COLUMNS) -> None:
    if as_json or not isinstance(result, dict | list):
        print(json.dumps(result, indent=2))
    elif isinstance(result, list):
        print(table(result, columns))
    else:
        print(table([result], columns))
        if result.get("failureReason"):
            print(f"reason: {result['failureReason']}")
        # An endpoint's: why its workers are unhealthy, why billing holds it at zero.
        for reason in result.get("unhealthyReasons") or []:
            print(f"unhealthy: {reason}")
        if result.get("suspendedReason"):
            print(f"held: {result['suspendedReason']}")


def login(url: str, email: str, password: str | None) -> int:
    secret = password if password is not None else getpass.getpass("password: ")
    try:
        response = httpx.post(
            url + "/auth/login", json={"email": email, "password": secret}, timeout=30
        )
    except httpx.HTTPError as exc:
        print(f"gpuworker: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"gpuworker: login failed: {response.text}", file=sys.stderr)
        return 1
    tokens = response.json()
    _save({"url": url, "access_token": tokens["access_token"]})
    print(f"logged in to {url} as {email}")
    return 0


def instances(action: str, args: Any) -> int:
    try:
        result: Any
        if action == "list":
            result = list_all("/instances")
        elif action == "get":
            result = _call("GET", f"/instances/{args.id}")
        elif action == "create":
            body: dict[str, Any] = {
                "name": args.name,
                "gpuTypeId": args.gpu_type,
                "templateId": args.template,
                "gpuCount": args.gpu_count,
                "cloudType": args.cloud_type,
            }
            if args.datacenter:
                body["dataCenterId"] = args.datacenter
            if args.env:
                body["env"] = dict(item.split("=", 1) for item in args.env)
            result = _call("POST", "/instances", body)
        elif action in ("start", "stop", "restart"):
            result = _call("POST", f"/instances/{args.id}/{action}")
        elif action == "connect":
            from services.cli.connect_commands import connect

            return connect(args.id, args.json)
        elif action == "delete":
            _call("DELETE", f"/instances/{args.id}")
            print(f"instance {args.id} is terminating")
            return 0
        else:
            raise ApiError(f"unknown action {action}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0


def volumes(action: str, args: Any) -> int:
    try:
        result: Any
        if action == "list":
            result = list_all("/volumes")
        elif action == "create":
            body = {"name": args.name, "size": args.size, "dataCenterId": args.datacenter}
            result = _call("POST", "/volumes", body)
        elif action == "resize":
            result = _call("PATCH", f"/volumes/{args.id}", {"size": args.size})
        elif action == "delete":
            result = _call("DELETE", f"/volumes/{args.id}")
            print(result["message"] if isinstance(result, dict) else result)
            return 0
        else:
            raise ApiError(f"unknown action {action}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    _print(result, args.json, VOLUME_COLUMNS)
    return 0


def api_keys(action: str, args: Any) -> int:
    try:
        if action == "list":
            _print(list_all("/api-keys"), args.json, API_KEY_COLUMNS)
        elif action == "create":
            created = _call("POST", "/api-keys", {"name": args.name})
            if args.json:
                print(json.dumps(created, indent=2))
            else:
                print(table([created], API_KEY_COLUMNS))
                print(f"key: {created['key']}")
                print(
                    "This is the only time the key is shown; keep it somewhere safe. Send it as"
                    " `Authorization: Bearer <key>`, or set GPUWORKER_TOKEN to it.",
                    file=sys.stderr,
                )
        elif action == "revoke":
            _call("DELETE", f"/api-keys/{args.id}")
            print(f"API key {args.id} revoked")
        else:
            raise ApiError(f"unknown action {action}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    return 0


def endpoints(action: str, args: Any) -> int:
    try:
        result: Any
        if action == "list":
            result = list_all("/endpoints")
        elif action == "get":
            result = _call("GET", f"/endpoints/{args.id}")
        elif action == "create":
            body: dict[str, Any] = {
                "name": args.name,
                "templateId": args.template,
                "gpuIds": args.gpu_ids,
                "gpuCount": args.gpu_count,
                "workersMin": args.workers_min,
                "workersMax": args.workers_max,
            }
            if args.idle_timeout is not None:
                body["idleTimeout"] = args.idle_timeout
            if args.execution_timeout_ms is not None:
                body["executionTimeoutMs"] = args.execution_timeout_ms
            if args.env:
                body["env"] = dict(item.split("=", 1) for item in args.env)
            result = _call("POST", "/endpoints", body)
        elif action == "delete":
            _call("DELETE", f"/endpoints/{args.id}")
            print(f"endpoint {args.id} deleted; its queued and running jobs are cancelled")
            return 0
        else:
            raise ApiError(f"unknown action {action}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    _print(result, args.json, ENDPOINT_COLUMNS)
    return 0


def jobs(action: str, args: Any) -> int:
    try:
        result: Any
        if action == "run":
            try:
                payload = json.loads(args.input)
            except ValueError as exc:
                raise ApiError(f"--input is not JSON: {exc}") from None
            body: dict[str, Any] = {"input": payload}
            if args.webhook:
                body["webhook"] = args.webhook
            if args.sync:
                result = _call("POST", f"/endpoints/{args.endpoint}/runsync?wait={args.wait}", body)
            else:
                result = _call("POST", f"/endpoints/{args.endpoint}/run", body)
        elif action == "status":
            result = _call("GET", f"/endpoints/{args.endpoint}/status/{args.id}")
        elif action == "cancel":
            result = _call("POST", f"/endpoints/{args.endpoint}/cancel/{args.id}")
        else:
            raise ApiError(f"unknown action {action}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    if args.json or "output" in result or "error" in result:
        print(json.dumps(result, indent=2))
    else:
        print(table([result], JOB_COLUMNS))
    return 0


def add_serverless_parsers(sub: Any) -> None:
    ends = sub.add_parser(
        "endpoints", help="serverless endpoints: list, create, get, delete, worker-env"
    )
    esub = ends.add_subparsers(dest="action", required=True)
    elist = esub.add_parser("list")
    elist.add_argument("--json", action="store_true")
    for name in ("get", "delete"):
        p = esub.add_parser(name)
        p.add_argument("id")
        p.add_argument("--json", action="store_true")
    ecreate = esub.add_parser("create")
    ecreate.add_argument("--name", required=True)
    ecreate.add_argument("--template", required=True)
    ecreate.add_argument(
        "--gpu-ids", required=True, help="a GPU type, or several comma-separated by preference"
    )
    ecreate.add_argument("--gpu-count", type=int, default=1)
    ecreate.add_argument("--workers-min", type=int, default=0)
    ecreate.add_argument("--workers-max", type=int, default=3)
    ecreate.add_argument("--idle-timeout", type=int, help="seconds, 1 to 3600 (default 5)")
    ecreate.add_argument("--execution-timeout-ms", type=int)
    ecreate.add_argument("--env", action="append", metavar="KEY=VALUE")
    ecreate.add_argument("--json", action="store_true")
    env = esub.add_parser(
        "worker-env",
        help="(operator) print the environment of a worker of ENDPOINT_ID: RUNPOD_* and"
        " GPUWORKER_* for the runpod SDK (needs DATABASE_URL and GPUWORKER_SECRET_KEY)",
    )
    env.add_argument("endpoint_id")
    env.add_argument("worker_id")
    env.add_argument(
        "--url", required=True, help="the api as the worker reaches it, e.g. http://127.0.0.1:8080"
    )
    env.add_argument("--json", action="store_true")

    job = sub.add_parser("jobs", help="serverless jobs: run, status, cancel")
    jsub = job.add_subparsers(dest="action", required=True)
    jrun = jsub.add_parser("run")
    jrun.add_argument("endpoint")
    jrun.add_argument("--input", required=True, help="the job's input, as JSON")
    jrun.add_argument("--webhook")
    jrun.add_argument("--sync", action="store_true", help="runsync: wait for the result")
    jrun.add_argument("--wait", type=int, default=90_000, help="with --sync: ms (default 90 s)")
    jrun.add_argument("--json", action="store_true")
    for name in ("status", "cancel"):
        p = jsub.add_parser(name)
        p.add_argument("endpoint")
        p.add_argument("id")
        p.add_argument("--json", action="store_true")


def add_parsers(sub: Any) -> None:
    login_p = sub.add_parser("login", help="log in to a GPUWorker API and keep the token")
    login_p.add_argument("email")
    login_p.add_argument("--url", default=os.environ.get("GPUWORKER_API_URL", DEFAULT_URL))
    login_p.add_argument("--password", help="(default: prompt)")

    inst = sub.add_parser("instances", help="GPU instances: list, create, get, start, stop, …")
    isub = inst.add_subparsers(dest="action", required=True)
    for name in ("list",):
        p = isub.add_parser(name)
        p.add_argument("--json", action="store_true")
    for name in ("get", "start", "stop", "restart", "delete", "connect"):
        p = isub.add_parser(name)
        p.add_argument("id")
        p.add_argument("--json", action="store_true")
    create = isub.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--gpu-type", required=True, help='e.g. "NVIDIA GeForce RTX 4090"')
    create.add_argument("--template", required=True, help="e.g. pytorch-cuda12-2.1")
    create.add_argument("--gpu-count", type=int, default=1)
    create.add_argument("--cloud-type", choices=["SECURE", "COMMUNITY"], default="SECURE")
    create.add_argument("--datacenter")
    create.add_argument("--env", action="append", metavar="KEY=VALUE")
    create.add_argument("--json", action="store_true")

    vol = sub.add_parser("volumes", help="network volumes: list, create, resize, delete")
    vsub = vol.add_subparsers(dest="action", required=True)
    vlist = vsub.add_parser("list")
    vlist.add_argument("--json", action="store_true")
    vcreate = vsub.add_parser("create")
    vcreate.add_argument("--name", required=True)
    vcreate.add_argument("--size", type=int, required=True, help="GB, 10 to 4000")
    vcreate.add_argument("--datacenter", required=True, help="e.g. US-TX-3")
    vcreate.add_argument("--json", action="store_true")
    vresize = vsub.add_parser("resize")
    vresize.add_argument("id")
    vresize.add_argument("--size", type=int, required=True, help="new size in GB (only grows)")
    vresize.add_argument("--json", action="store_true")
    vdelete = vsub.add_parser("delete", help="delete a volume: its data is permanently lost")
    vdelete.add_argument("id")
    vdelete.add_argument("--json", action="store_true")

    keys = sub.add_parser("api-keys", help="API keys for scripts and SDKs: create, list, revoke")
    ksub = keys.add_subparsers(dest="action", required=True)
    kcreate = ksub.add_parser("create", help="create a key: it is printed this once, never again")
    kcreate.add_argument("name")
    kcreate.add_argument("--json", action="store_true")
    klist = ksub.add_parser("list", help="your keys (never the keys themselves)")
    klist.add_argument("--json", action="store_true")
    krevoke = ksub.add_parser("revoke", help="revoke a key: it stops working at once")
    krevoke.add_argument("id")

    add_serverless_parsers(sub)


def run(command: str, args: Any, argv: Sequence[str] | None = None) -> int:
    del argv
    if command == "login":
        return login(args.url, args.email, args.password)
    if command == "volumes":
        return volumes(args.action, args)
    if command == "api-keys":
        return api_keys(args.action, args)
    if command == "endpoints":
        return endpoints(args.action, args)
    if command == "jobs":
        return jobs(args.action, args)
    return instances(args.action, args)
