"""`gpuworker billing summary|balance|export`: a customer's money, from the HTTP API with the saved
login (`gpuworker login`). `gpuworker billing credit` is the operator's and lives in operator.py."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from services.cli.client import ApiError, download, get_json, table

_GROUP_FIELDS = ("instanceId", "gpuTypeId", "endpointId", "volumeId")


def _window(args: Any) -> dict[str, str]:
    params = {}
    if args.start:
        params["startTime"] = args.start
    if args.end:
        params["endTime"] = args.end
    return params


def _usd(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    return f"{sign}${abs(micros) / 1_000_000:,.6f}"


def summary(args: Any) -> int:
    params = {**_window(args), "bucketSize": args.bucket}
    if args.grouping:
        params["grouping"] = args.grouping
    records: list[dict[str, Any]] = get_json(f"/billing/{args.resource}", params)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = []
    for record in records:
        group = next((record[f] for f in _GROUP_FIELDS if f in record), None)
        rows.append(
            {
                "time": record["time"],
                "group": group if group is not None else "-",
                "amount": _usd(record["amountMicros"]),
                "gpu": f"{record.get('timeBilledMs', 0) / 1000:g}",
                "disk": f"{record.get('diskSpaceBilledGb', 0):g}",
                "posted": "yes" if record["posted"] else "not yet",
            }
        )
    print(
        table(
            rows,
            (
                ("time", "TIME"),
                ("group", "GROUP"),
                ("amount", "AMOUNT"),
                ("gpu", "GPU SECONDS"),
                ("disk", "DISK GB"),
                ("posted", "POSTED"),
            ),
        )
    )
    total = sum(int(r["amountMicros"]) for r in records)
    print(f"total {_usd(total)} over {len(records)} record(s)")
    return 0


def balance(args: Any) -> int:
    body: dict[str, Any] = get_json("/billing/balance")
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"balance           {_usd(body['balanceMicros'])}")
    print(f"spend per hour    {_usd(body['spendPerHourMicros'])}")
    if body.get("hoursUntilEmpty") is not None:
        print(f"empty in          {body['hoursUntilEmpty']:.1f} h (at {body['emptyAt']})")
    print(f"spent this month  {_usd(body['monthSpendMicros'])}")
    print(f"limit per hour    ${body['spendLimitPerHour']:,.2f}")
    budget = body.get("monthlyBudget")
    print(f"monthly budget    {'none' if budget is None else f'${budget:,.2f}'}")
    return 0


def export(args: Any) -> int:
    params = {**_window(args), "format": args.format}
    with ExitStack() as stack:
        sink = (
            stack.enter_context(Path(args.output).open("wb")) if args.output else sys.stdout.buffer
        )
        written = download("/billing/export", params, sink)
    if args.output:
        print(f"wrote {written} bytes to {args.output}", file=sys.stderr)
    return 0


def run(args: Any) -> int:
    actions = {"summary": summary, "balance": balance, "export": export}
    try:
        return actions[args.action](args)
    except ApiError as exc:
        print(f"gpuworker: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: Any) -> None:
    billing = sub.add_parser(
        "billing", help="your costs, balance and postings; `credit` for operators"
    )
    bsub = billing.add_subparsers(dest="action", required=True)
    summary_p = bsub.add_parser("summary", help="what your resources cost, bucket by bucket")
    summary_p.add_argument(
        "--resource", choices=["instances", "serverless", "volumes"], default="instances"
    )
    summary_p.add_argument("--bucket", choices=["hour", "day", "week", "month"], default="day")
    summary_p.add_argument(
        "--grouping", help="instanceId|gpuTypeId, endpointId|gpuTypeId, or volumeId"
    )
    balance_p = bsub.add_parser("balance", help="balance, spend per hour and this month")
    export_p = bsub.add_parser("export", help="your postings as CSV or JSON Lines")
    export_p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export_p.add_argument("--output", help="file to write (default: standard output)")
    summary_p.add_argument("--from", dest="start", help="ISO 8601 start (default: 30 days ago)")
    export_p.add_argument("--from", dest="start", help="ISO 8601 start (default: the first)")
    for p in (summary_p, export_p):
        p.add_argument("--to", dest="end", help="ISO 8601 end, exclusive (default: now)")
    for p in (summary_p, balance_p):
        p.add_argument("--json", action="store_true")
    credit = bsub.add_parser(
        "credit", help="(operator) credit a customer's balance; talks to NATS and PostgreSQL"
    )
    credit.add_argument("email")
    credit.add_argument("amount", help="USD, e.g. 25 or 12.50")
    credit.add_argument("--reason", required=True)
