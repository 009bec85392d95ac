"""`gpuworker`: one command line for every role and the operator's tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services import event_loop
from services.cli import billing, client, connect_commands
from services.config import ConfigurationError, Settings
from services.roles.lifecycle import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuworker", description="GPUWorker control plane")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every role, with embedded PostgreSQL and NATS if unset")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--data-dir", type=Path, default=Path(".gpuworker"))
    up.add_argument("--runtime", choices=["docker", "simulated"], default=None)
    up.add_argument(
        "--gpus", default=None, help='declared inventory, e.g. "NVIDIA A100 80GB PCIe:4"'
    )
    up.add_argument("--datacenter", default="US-TX-3")

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    sub.add_parser("deciders", help="answer commands and append events")
    agent = sub.add_parser("agent", help="run a GPU host's executor")
    agent.add_argument("--host-id", default=os.environ.get("GPUWORKER_HOST_ID"))
    agent.add_argument("--datacenter", default=os.environ.get("GPUWORKER_DATACENTER", "US-TX-3"))
    agent.add_argument(
        "--cloud-type",
        choices=["SECURE", "COMMUNITY"],
        default=os.environ.get("GPUWORKER_CLOUD_TYPE", "SECURE"),
    )
    agent.add_argument(
        "--runtime",
        choices=["docker", "simulated"],
        default=os.environ.get("GPUWORKER_RUNTIME") or None,
    )
    agent.add_argument("--gpus", default=os.environ.get("GPUWORKER_GPUS") or None)
    agent.add_argument(
        "--simulate-hosts",
        type=int,
        default=int(os.environ.get("GPUWORKER_SIMULATE_HOSTS", "1")),
        help="run N simulated hosts in this process (scale tests)",
    )
    sub.add_parser("projector", help="keep the read models up to date")
    sub.add_parser("audit", help="keep the append-only audit log of every event")
    sub.add_parser("migrate", help="apply database migrations and exit")

    projections = sub.add_parser("projections", help="projection maintenance")
    psub = projections.add_subparsers(dest="action", required=True)
    rebuild = psub.add_parser("rebuild", help="drop a projection and replay it from sequence 1")
    rebuild.add_argument("name", nargs="?", help="one projection (default: all)")

    client.add_parsers(sub)
    connect_commands.add_parsers(sub)

    nats_cmd = sub.add_parser("nats", help="NATS users and permissions")
    nsub = nats_cmd.add_subparsers(dest="action", required=True)
    add_agent = nsub.add_parser(
        "add-agent", help="mint the NATS user of a GPU host's agent (for `up`'s embedded server)"
    )
    add_agent.add_argument("host_id")
    add_agent.add_argument("--data-dir", type=Path, default=Path(".gpuworker"))
    add_agent.add_argument(
        "--fleet",
        action="store_true",
        help="also cover host ids under it (HOST_ID.0000, …): `agent --simulate-hosts`",
    )
    authorization = nsub.add_parser(
        "authorization",
        help="print the nats-server authorization block (deploy/nats/auth.conf) for compose",
    )
    authorization.add_argument("--agent", action="append", default=[], metavar="HOST_ID")
    authorization.add_argument("--fleet-agent", action="append", default=[], metavar="HOST_ID")

    host_key_cmd = sub.add_parser(
        "host-key",
        help="print a GPU host's key (GPUWORKER_HOST_KEY of its agent), from GPUWORKER_SECRET_KEY",
    )
    host_key_cmd.add_argument("host_id")

    ledger = sub.add_parser(
        "ledger", help="run the billing ledger (usage, postings, spend control), or inspect it"
    )
    lsub = ledger.add_subparsers(dest="action")
    lsub.add_parser("verify", help="prove the ledger's invariants; exit 1 on any break")
    ledger_export = lsub.add_parser(
        "export", help="postings for finance as CSV, JSON Lines or Parquet (streamed)"
    )
    ledger_export.add_argument("--from", dest="start", help="ISO 8601 (default: the first)")
    ledger_export.add_argument("--to", dest="end", help="ISO 8601, exclusive (default: all)")
    ledger_export.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    ledger_export.add_argument("--user", metavar="EMAIL", help="one customer's postings only")
    ledger_export.add_argument(
        "--output", type=Path, help="file to write (default: standard output; Parquet needs one)"
    )
    billing.add_parser(sub)

    blog = sub.add_parser("blog", help="the public blog")
    bsub = blog.add_subparsers(dest="action", required=True)
    publish = bsub.add_parser("publish", help="publish or update a post")
    publish.add_argument("slug")
    publish.add_argument("--title", required=True)
    publish.add_argument("--summary", default="")
    publish.add_argument("--body-file", type=Path, required=True)
    return parser


# The long-running roles that serve metrics of their own (the api serves them on /metrics).
METRICS_ROLES = ("deciders", "projector", "ledger", "audit", "agent")


def _print_host_key(host_id: str) -> int:
    from services.security.host_keys import host_key

    master = os.environ.get("GPUWORKER_SECRET_KEY")
    if not master:
        print("gpuworker: set GPUWORKER_SECRET_KEY (the platform's master key)", file=sys.stderr)
        return 2
    try:
        print(host_key(master, host_id))
    except ValueError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "endpoints" and args.action == "worker-env":
        from services.cli.worker_env_command import print_worker_env

        return print_worker_env(args)
    if args.command in ("login", "instances", "volumes", "api-keys", "endpoints", "jobs"):
        return client.run(args.command, args)
    if args.command == "billing" and args.action != "credit":
        return billing.run(args)
    if args.command in ("logs", "ssh", "ssh-keys"):
        return connect_commands.run(args.command, args)
    if args.command == "host-key":
        return _print_host_key(args.host_id)
    configure_logging()
    if args.command == "up":
        from services.cli.up import up

        return up(args.host, args.port, args.data_dir, args.runtime, args.gpus, args.datacenter)
    if args.command == "nats":
        from services.cli.nats_users import run_nats_command

        return run_nats_command(args)
    try:
        return _run_role(args, Settings.from_env(gpu_host=args.command == "agent"))
    except ConfigurationError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 2


def _run_role(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in METRICS_ROLES and getattr(args, "action", None) is None:
        from services import role_metrics

        role_metrics.serve(args.command)
    # The long-running roles run on uvloop (services/event_loop.py): on the deciders, the
    # stdlib loop's socket writes alone were a sixth of their CPU under a job load.
    if args.command == "api":
        from services.roles.api import run_api

        event_loop.run(run_api(settings, args.host, args.port))
    elif args.command == "deciders":
        from services.roles.deciders import run_deciders

        event_loop.run(run_deciders(settings))
    elif args.command == "ledger" and args.action is None:
        from services.roles.ledger import run_ledger

        event_loop.run(run_ledger(settings))
    elif args.command == "ledger" and args.action == "verify":
        from services.cli.ledger_commands import verify

        return asyncio.run(verify(settings))
    elif args.command == "ledger" and args.action == "export":
        from services.cli.ledger_commands import export

        return asyncio.run(
            export(settings, args.format, args.start, args.end, args.user, args.output)
        )
    elif args.command == "billing":
        from services.cli.operator import grant_credit

        return asyncio.run(grant_credit(settings, args.email, args.amount, args.reason))
    elif args.command == "agent":
        from services.roles.agent import run_agent

        event_loop.run(
            run_agent(
                settings,
                args.host_id,
                args.datacenter,
                args.cloud_type,
                args.runtime,
                args.gpus,
                args.simulate_hosts,
            )
        )
    elif args.command == "projector":
        from services.roles.projector import run_projector

        event_loop.run(run_projector(settings))
    elif args.command == "audit":
        from services.roles.audit import run_audit

        event_loop.run(run_audit(settings))
    elif args.command == "migrate":
        from projections.migrate import migrate

        applied = asyncio.run(migrate(settings.database_url))
        print(f"applied {len(applied)} migration(s)")
    elif args.command == "projections":
        from services.cli.operator import rebuild_projections

        return asyncio.run(rebuild_projections(settings, args.name))
    elif args.command == "blog":
        from services.cli.operator import publish_post

        return asyncio.run(
            publish_post(settings, args.slug, args.title, args.summary, args.body_file.read_text())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
