"""Reaching an instance from the command line: `gpuworker instances connect ID` (its URLs and port
mappings), `gpuworker logs ID [-f]`, `gpuworker ssh ID` (through its 22/tcp mapping) and
`gpuworker ssh-keys add|list|remove` (the account's keys, which instances get at start)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx

from services.cli.client import ApiError, _call, _load
from services.ssh_keys import fingerprint

SSH_PORT = "22"


def connect_lines(instance: dict[str, Any]) -> list[str]:
    """What `instances connect` prints: each way in, or why there is none yet."""
    lines = [f"instance {instance['id']} ({instance['name']}): {instance['status']}"]
    for url in instance.get("urls") or []:
        lines.append(f"  http  {url}")
    mappings: dict[str, int] = instance.get("portMappings") or {}
    ip = instance.get("publicIp")
    for port, host_port in sorted(mappings.items()):
        lines.append(f"  tcp   {port} -> {ip}:{host_port}")
    if SSH_PORT in mappings:
        lines.append(
            f"  ssh   ssh root@{ip} -p {mappings[SSH_PORT]}   (or: gpuworker ssh {instance['id']})"
        )
    if instance["status"] != "RUNNING":
        lines.append("  (ports answer while it is RUNNING)")
    elif not mappings and not instance.get("urls"):
        lines.append("  (it declares no ports: add e.g. 8888/http or 22/tcp to its `ports`)")
    return lines


def ssh_command(instance: dict[str, Any], extra: list[str]) -> list[str]:
    mappings: dict[str, int] = instance.get("portMappings") or {}
    if instance["status"] != "RUNNING":
        raise ApiError(f"instance {instance['id']} is {instance['status']}; start it first")
    if SSH_PORT not in mappings or not instance.get("publicIp"):
        raise ApiError(
            f'instance {instance["id"]} has no 22/tcp port: add "22/tcp" to its ports'
            " (PATCH /instances/ID) and an SSH server to its image"
        )
    return ["ssh", "-p", str(mappings[SSH_PORT]), *extra, f"root@{instance['publicIp']}"]


def connect(instance_id: str, as_json: bool) -> int:
    try:
        instance = _call("GET", f"/instances/{instance_id}")
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    if as_json:
        keys = ("id", "status", "urls", "publicIp", "portMappings")
        print(json.dumps({k: instance.get(k) for k in keys}, indent=2))
    else:
        print("\n".join(connect_lines(instance)))
    return 0


def ssh(instance_id: str, extra: list[str]) -> int:
    try:
        command = ssh_command(_call("GET", f"/instances/{instance_id}"), extra)
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    if shutil.which("ssh") is None:
        print("gpuworker: no `ssh` on PATH; run: " + " ".join(command), file=sys.stderr)
        return 1
    # The session takes over this process; the arguments are a list, never a shell line.
    os.execvp("ssh", command)  # noqa: S606


def logs(args: Any) -> int:
    creds = _load()
    params: dict[str, str | int] = {"tail": args.tail}
    if args.follow:
        params["follow"] = "true"
    if args.since:
        params["since"] = args.since
    if args.timestamps:
        params["timestamps"] = "true"
    headers = (
        {"authorization": f"Bearer {creds['access_token']}"} if creds.get("access_token") else {}
    )
    url = f"{creds['url']}/instances/{args.id}/logs"
    try:
        # Following waits for new lines as long as it takes: no read timeout, a connect one.
        timeout = httpx.Timeout(None, connect=30)
        with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text
                print(f"gpuworker: {response.status_code}: {message}", file=sys.stderr)
                return 1
            for chunk in response.iter_text():
                sys.stdout.write(chunk)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except httpx.HTTPError as exc:
        print(f"gpuworker: cannot reach {creds['url']}: {exc}", file=sys.stderr)
        return 1
    return 0


def ssh_keys(args: Any) -> int:
    try:
        keys: list[str] = _call("GET", "/me")["sshPublicKeys"]
        if args.action == "add":
            text = Path(args.file).expanduser().read_text().strip()
            keys = [*keys, *(line for line in text.splitlines() if line.strip())]
            keys = _call("PATCH", "/me", {"sshPublicKeys": keys})["sshPublicKeys"]
        elif args.action == "remove":
            kept = [k for k in keys if fingerprint(k) != args.fingerprint]
            if len(kept) == len(keys):
                raise ApiError(f"no key with fingerprint {args.fingerprint}")
            keys = _call("PATCH", "/me", {"sshPublicKeys": kept})["sshPublicKeys"]
    except (ApiError, OSError) as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1
    for key in keys:
        parts = key.split(maxsplit=2)
        comment = parts[2] if len(parts) > 2 else ""
        print(f"{fingerprint(key)}  {parts[0]}  {comment}".rstrip())
    if args.action != "list":
        print("Instances get the keys at their next start.", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    logs_p = sub.add_parser("logs", help="what an instance's container printed (-f: follow)")
    logs_p.add_argument("id")
    logs_p.add_argument("-f", "--follow", action="store_true")
    logs_p.add_argument("--tail", type=int, default=100, help="the last N lines (default 100)")
    logs_p.add_argument("--since", help="only lines from this time on (RFC 3339)")
    logs_p.add_argument("-t", "--timestamps", action="store_true")

    ssh_p = sub.add_parser("ssh", help="open an SSH session to an instance (its 22/tcp port)")
    ssh_p.add_argument("id")
    ssh_p.add_argument("ssh_args", nargs="*", help="passed to ssh (after --), e.g. -- -i KEY")

    keys = sub.add_parser("ssh-keys", help="your SSH public keys, given to instances at start")
    ksub = keys.add_subparsers(dest="action", required=True)
    ksub.add_parser("list")
    add = ksub.add_parser("add", help="add the keys in a .pub file")
    add.add_argument("file", help="e.g. ~/.ssh/id_ed25519.pub")
    remove = ksub.add_parser("remove", help="remove a key by its fingerprint (SHA256:…)")
    remove.add_argument("fingerprint")


def run(command: str, args: Any) -> int:
    if command == "logs":
        return logs(args)
    if command == "ssh":
        return ssh(args.id, list(args.ssh_args))
    return ssh_keys(args)
