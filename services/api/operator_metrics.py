"""What an operator watches on `/metrics`, beside the api's own HTTP counters: the fleet's GPUs,
instances by status, how far each projection is behind, serverless queues, and the ledger's
accrual lag, all from the read models.

The numbers come from PostgreSQL, which a scrape must not wait on (a scrape during an outage would
hang with it), so a background task refreshes a snapshot every few seconds and the collector
serves the last one, with `gpuworker_operator_metrics_age_seconds` saying how old it is."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

import psycopg
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from projections import checkpoints
from services.deciders.entitlements import BILLING_ACTOR
from services.deciders.instance import Status as InstanceStatus

log = logging.getLogger("gpuworker.metrics")

REFRESH_S = 5.0

_GPUS = """
SELECT h.doc->>'datacenter_id', g->>'gpu_type_id',
    count(*) FILTER (WHERE h.doc->'allocations' ? (g->>'uuid')),
    count(*) FILTER (WHERE NOT h.doc->'allocations' ? (g->>'uuid')
                     AND coalesce((h.doc->>'available')::boolean, true)),
    count(*) FILTER (WHERE NOT h.doc->'allocations' ? (g->>'uuid')
                     AND NOT coalesce((h.doc->>'available')::boolean, true))
FROM hosts h CROSS JOIN LATERAL jsonb_array_elements(h.doc->'gpus') g
WHERE NOT h.deleted
GROUP BY 1, 2
"""

_HOSTS = """
SELECT doc->>'datacenter_id', coalesce((doc->>'available')::boolean, true), count(*)
FROM hosts WHERE NOT deleted GROUP BY 1, 2
"""

_INSTANCES = "SELECT doc->>'status', count(*) FROM instances GROUP BY 1"

_QUEUES = """
SELECT endpoint_id,
    count(*) FILTER (WHERE status = 'IN_QUEUE'),
    count(*) FILTER (WHERE status = 'IN_PROGRESS'),
    extract(epoch FROM now() - min((doc->>'queued_at')::timestamptz)
        FILTER (WHERE status = 'IN_QUEUE'))
FROM jobs WHERE status IN ('IN_QUEUE', 'IN_PROGRESS') GROUP BY 1
"""

# The oldest second an open session has not been charged for yet: accruals run every minute, so a
# value well past that means the ledger role is not accruing.
_ACCRUAL = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(
    (doc->'session'->>'started_at')::timestamptz
    + (doc->>'billed_seconds')::bigint * interval '1 second')), 0)
FROM ledger_progress WHERE NOT settled
"""

_ENFORCEMENTS = "SELECT action, count(*) FROM audit_log WHERE actor = %s GROUP BY 1"


@dataclass
class Snapshot:
    taken_at: float = 0.0
    ok: bool = False
    # (datacenter, gpu type) -> (allocated, free, on lost hosts)
    gpus: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    hosts: dict[tuple[str, bool], int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    projections: dict[str, checkpoints.Status] = field(default_factory=dict)
    # endpoint -> (queued, in progress, oldest queued age in seconds)
    queues: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    open_sessions: int = 0
    accrual_lag_s: float = 0.0
    enforcements: dict[str, int] = field(default_factory=dict)


async def take(conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    snap = Snapshot(taken_at=time.time(), ok=True)
    for dc, gpu_type, allocated, free, lost in await (await conn.execute(_GPUS)).fetchall():
        snap.gpus[(dc, gpu_type)] = (int(allocated), int(free), int(lost))
    for dc, available, count in await (await conn.execute(_HOSTS)).fetchall():
        snap.hosts[(dc, bool(available))] = int(count)
    for status, count in await (await conn.execute(_INSTANCES)).fetchall():
        snap.instances[status] = int(count)
    snap.projections = await checkpoints.statuses(conn)
    for endpoint, queued, running, oldest in await (await conn.execute(_QUEUES)).fetchall():
        snap.queues[endpoint] = (int(queued), int(running), float(oldest or 0.0))
    row = await (await conn.execute(_ACCRUAL)).fetchone()
    if row is not None:
        snap.open_sessions, snap.accrual_lag_s = int(row[0]), float(row[1])
    cur = await conn.execute(_ENFORCEMENTS, (BILLING_ACTOR,))
    snap.enforcements = {action: int(count) for action, count in await cur.fetchall()}
    return snap


class OperatorCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        up = GaugeMetricFamily(
            "gpuworker_operator_metrics_up",
            "1 when the last refresh of these metrics from PostgreSQL worked",
        )
        up.add_metric([], 1.0 if s.ok else 0.0)
        yield up
        age = GaugeMetricFamily(
            "gpuworker_operator_metrics_age_seconds", "Seconds since these metrics were refreshed"
        )
        age.add_metric([], time.time() - s.taken_at if s.taken_at else float("inf"))
        yield age

        gpus = GaugeMetricFamily(
            "gpuworker_gpus",
            "GPUs by data center, type and state (allocated, free, or free on a lost host)",
            labels=["datacenter", "gpu_type", "state"],
        )
        for (dc, gpu_type), (allocated, free, lost) in sorted(s.gpus.items()):
            gpus.add_metric([dc, gpu_type, "allocated"], allocated)
            gpus.add_metric([dc, gpu_type, "free"], free)
            gpus.add_metric([dc, gpu_type, "unavailable"], lost)
        yield gpus

        hosts = GaugeMetricFamily(
            "gpuworker_hosts",
            "GPU hosts by data center and whether they are heard from (available) or lost",
            labels=["datacenter", "state"],
        )
        for (dc, available), count in sorted(s.hosts.items()):
            hosts.add_metric([dc, "available" if available else "lost"], count)
        yield hosts

        instances = GaugeMetricFamily(
            "gpuworker_instances", "Instances by status", labels=["status"]
        )
        # Every status, 0 when none: a series that vanishes with its last instance reads as "no
        # data" rather than zero, and breaks rates and alerts over it.
        for status in get_args(InstanceStatus):
            instances.add_metric([status], s.instances.get(status, 0))
        yield instances

        lag = GaugeMetricFamily(
            "gpuworker_projection_lag_events",
            "Events in the stream a projection has not applied yet, as its projector last said",
            labels=["projection"],
        )
        halted = GaugeMetricFamily(
            "gpuworker_projection_halted",
            "1 when a projection stopped at an event it cannot apply (see /health)",
            labels=["projection"],
        )
        applied = GaugeMetricFamily(
            "gpuworker_projection_checkpoint",
            "The last stream sequence a projection applied",
            labels=["projection"],
        )
        for name, progress in sorted(s.projections.items()):
            lag.add_metric([name], progress.pending or 0)
            halted.add_metric([name], 1.0 if progress.halted else 0.0)
            applied.add_metric([name], progress.last_sequence)
        yield lag
        yield halted
        yield applied

        depth = GaugeMetricFamily(
            "gpuworker_job_queue_depth", "Jobs waiting for a worker", labels=["endpoint"]
        )
        running = GaugeMetricFamily(
            "gpuworker_jobs_in_progress", "Jobs a worker is running", labels=["endpoint"]
        )
        oldest = GaugeMetricFamily(
            "gpuworker_job_oldest_queued_seconds",
            "How long the oldest waiting job has waited",
            labels=["endpoint"],
        )
        for endpoint, (queued, in_progress, waited) in sorted(s.queues.items()):
            depth.add_metric([endpoint], queued)
            running.add_metric([endpoint], in_progress)
            oldest.add_metric([endpoint], waited)
        yield depth
        yield running
        yield oldest

        sessions = GaugeMetricFamily(
            "gpuworker_ledger_open_sessions", "Usage sessions being billed (open meters)"
        )
        sessions.add_metric([], s.open_sessions)
        yield sessions
        accrual = GaugeMetricFamily(
            "gpuworker_ledger_accrual_lag_seconds",
            "Age of the oldest second of usage not charged yet (about 60 while accruals run)",
        )
        accrual.add_metric([], s.accrual_lag_s)
        yield accrual
        enforced = GaugeMetricFamily(
            "gpuworker_billing_enforcements",
            "What billing did to customers' resources for lack of money (budget stops), by event",
            labels=["action"],
        )
        for action, count in sorted(s.enforcements.items()):
            enforced.add_metric([action], count)
        yield enforced


@functools.cache
def collector() -> OperatorCollector:
    """One per process: the registry is the process's (as Litestar's Prometheus plugin's is)."""
    made = OperatorCollector()
    REGISTRY.register(made)
    return made


async def refresh_forever(pool: AsyncConnectionPool[Any], every_s: float = REFRESH_S) -> None:
    target = collector()
    while True:
        try:
            async with pool.connection() as conn:
                target.snapshot = await take(conn)
        except Exception as exc:  # the last snapshot stays, marked stale
            target.snapshot.ok = False
            log.warning("operator metrics not refreshed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(every_s)
