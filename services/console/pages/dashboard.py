"""The dashboard: balance, spend per hour, time until the balance runs out, what runs now, and
spend per day over the last 30 days (the billing summaries of instances, serverless and volumes,
added up per day)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, get
from litestar.response import Redirect, Template

from services.api.account import BalanceOut
from services.api.billing import InstanceRecord, ServerlessRecord, VolumeRecord
from services.api.endpoints import EndpointOut
from services.api.instances import InstanceOut
from services.console.charts import chart, daily
from services.console.render import page
from services.console.rest import rest_of


@get("/", include_in_schema=False)
async def root() -> Redirect:
    """The api's own address opens the console."""
    return Redirect("/console/", status_code=303)


@get("/console/", name="console:dashboard")
async def dashboard(request: Request[Any, Any, Any]) -> Template:
    rest = rest_of(request)
    balance = await rest.call("GET", "/billing/balance", request, BalanceOut)
    instances = await rest.listed("/instances", request, InstanceOut)
    endpoints = await rest.listed("/endpoints", request, EndpointOut)
    spent: list[tuple[datetime, int]] = []
    for path, kind in (
        ("/billing/instances", InstanceRecord),
        ("/billing/serverless", ServerlessRecord),
        ("/billing/volumes", VolumeRecord),
    ):
        records: list[Any] = await rest.call("GET", path, request, list[kind])  # type: ignore[valid-type]
        spent += [(r.time, r.amount_micros) for r in records]
    return page(
        request,
        "dashboard.html",
        balance=balance,
        running=[i for i in instances if i.status not in ("STOPPED", "TERMINATED")],
        stopped=sum(1 for i in instances if i.status == "STOPPED"),
        endpoints=endpoints,
        spend=chart("Spend per day, last 30 days", daily(spent, datetime.now(UTC))),
    )
