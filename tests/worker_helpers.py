"""Helpers for the tests of the workers the platform runs (the autoscaler on): an endpoint's events
from the stream, its workers' ledger sessions, `gpuworker ledger verify` on a stack, and waiting
for an endpoint's counts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime
from typing import Any

import httpx
import psycopg

from events.envelope import AggregateRef, Envelope
from events.store import JetStreamEventStore
from services.nats_permissions import DECIDERS_USER
from tests.api_helpers import wait_for
from tests.serverless_helpers import SERVERLESS_ENV
from tests.servers import Stack, connect_as

# The serverless stack's short times, with the autoscaler on and accruals every second.
AUTOSCALED_ENV = {
    **SERVERLESS_ENV,
    "GPUWORKER_AUTOSCALER": "1",
    "GPUWORKER_ACCRUAL_INTERVAL": "1",
}


async def _load(stack: Stack, aggregate: AggregateRef) -> list[Envelope]:
    nc = await connect_as(stack.nats, DECIDERS_USER)
    try:
        return await JetStreamEventStore(nc).load(aggregate)
    finally:
        await nc.close()


def endpoint_events(stack: Stack, endpoint_id: str) -> list[Envelope]:
    """The endpoint's events as the stream holds them (read as the deciders, who may)."""
    return asyncio.run(_load(stack, AggregateRef("endpoint", endpoint_id)))


def job_events(stack: Stack, job_id: str) -> list[Envelope]:
    return asyncio.run(_load(stack, AggregateRef("job", job_id)))


def worker_sessions(stack: Stack, owner_id: str) -> list[tuple[str, str, datetime, Any]]:
    """(worker id, tier, started, ended or None) of every serverless worker session of a user."""
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT s.resource_id, s.tier, s.started_at, e.ended_at FROM ledger_sessions s"
            " LEFT JOIN ledger_session_ends e ON e.session_id = s.id"
            " WHERE s.meter = 'serverless.worker' AND s.user_id = %s ORDER BY s.started_at",
            (owner_id,),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def ledger_verify(stack: Stack) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "ledger", "verify"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def endpoint(client: httpx.Client, endpoint_id: str) -> dict[str, Any]:
    response = client.get(f"/endpoints/{endpoint_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def workers_of(view: dict[str, Any]) -> int:
    return int(
        view["workersRunning"]
        + view["workersIdle"]
        + view["workersInitializing"]
        + view["workersUnhealthy"]
    )


def me(client: httpx.Client) -> str:
    response = client.get("/me")
    assert response.status_code == 200, response.text
    user_id: str = response.json()["id"]
    return user_id


def assert_unhealthy(client: httpx.Client, endpoint_id: str, code: int, timeout: float) -> None:
    """The endpoint turns unhealthy, naming its failing workers' exit code, on itself and in its
    /health."""

    def unhealthy() -> dict[str, Any] | None:
        view = endpoint(client, endpoint_id)
        return view if view["workersUnhealthy"] else None

    view = wait_for(unhealthy, timeout, "the endpoint unhealthy")
    reasons = " ".join(view["unhealthyReasons"])
    assert "workers in a row failed" in reasons and f"code {code}" in reasons, reasons
    health = client.get(f"/endpoints/{endpoint_id}/health").json()
    assert health["workers"]["unhealthy"] >= 1, health
