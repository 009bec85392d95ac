"""Each role's own metrics, on its own port: what only that process sees, for Prometheus to scrape.

The api's `/metrics` shows the fleet as the read models have it (services/api/operator_metrics.py);
the figures here come from inside the other roles: how long placements take, how long JetStream
takes to acknowledge an append and how often decisions collide (deciders), how long ago each host
was last heard from (deciders' host monitor), how far each projection's reader is behind the
stream (projector, audit), when the ledger last accrued and how many budget stops it asked for
(ledger), and what each agent does (agent).

A role serves them when GPUWORKER_METRICS_PORT is set (compose sets 9100), on
GPUWORKER_METRICS_ADDR (default 127.0.0.1: a port nobody asked for stays off the network)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("gpuworker.metrics")

ROLE = Gauge("gpuworker_role_info", "1 for the role this process runs", ["role"])

DECIDER_COMMANDS = Counter(
    "gpuworker_decider_commands",
    "Commands decided, by aggregate and outcome (applied, unchanged, refused, unavailable)",
    ["aggregate", "outcome"],
)
DECIDER_CONFLICTS = Counter(
    "gpuworker_decider_conflicts",
    "Appends refused because another decision on the same aggregate committed first; each is"
    " planned again on fresh state",
    ["aggregate"],
)
DECIDER_RETRIES = Counter(
    "gpuworker_decider_retried_commands",
    "Commands taken before (a client's or the bus's retry), answered from the aggregate's state",
    ["aggregate"],
)
APPEND_SECONDS = Histogram(
    "gpuworker_event_append_seconds",
    "Time from a decision's events sent to JetStream to their acknowledgement (stored, and with"
    " `sync_interval: always` written to disk): the floor under every command's latency",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)
PLACEMENT_KINDS = ("instance", "instance_start", "worker")
PLACEMENT_SECONDS = Histogram(
    "gpuworker_placement_seconds",
    "Time to place an instance or a serverless worker: choosing a host and committing its GPU"
    " lease, attempts on other hosts included",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PROJECTOR_PENDING = Gauge(
    "gpuworker_projector_pending_events",
    "Events in the stream this projection's reader has not applied yet, as NATS last reported",
    ["projection"],
)
PROJECTOR_POSITION = Gauge(
    "gpuworker_projector_position",
    "The stream sequence this projection's reader has applied up to",
    ["projection"],
)
LEDGER_LAST_ACCRUAL = Gauge(
    "gpuworker_ledger_last_accrual_timestamp_seconds",
    "When the ledger's last accrual cycle completed (Unix time); now minus this is its lag",
)
LEDGER_ACCRUED = Counter(
    "gpuworker_ledger_accrued_sessions", "Open sessions charged by the accrual cycles"
)
LEDGER_BUDGET_STOPS = Counter(
    "gpuworker_ledger_budget_stops",
    "Instances the ledger asked to stop because their owner could not pay or reached a limit",
)
AGENT_HEARTBEATS = Counter(
    "gpuworker_agent_heartbeats",
    "Heartbeat rounds this agent sent (one message per host it runs in each)",
    ["agent"],
)


class HeartbeatAges(Collector):
    """Seconds since each host's last heartbeat, read at scrape time from the host monitors of
    this process (one in a deciders role; tests may run several)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], dict[str, float]]] = []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gpuworker_agent_heartbeat_age_seconds",
            "Seconds since the host's agent was last heard from (hosts are marked lost past"
            " GPUWORKER_HOST_TIMEOUT)",
            labels=["host"],
        )
        now = time.monotonic()
        ages: dict[str, float] = {}
        for source in list(self.sources):
            for host, seen in source().items():
                ages[host] = min(ages.get(host, now - seen), now - seen)
        for host, age in sorted(ages.items()):
            family.add_metric([host], age)
        yield family


HEARTBEAT_AGES = HeartbeatAges()
REGISTRY.register(HEARTBEAT_AGES)


def serve(role: str) -> int | None:
    """Serve this process's metrics if GPUWORKER_METRICS_PORT says where; returns the port."""
    ROLE.labels(role).set(1)
    port = os.environ.get("GPUWORKER_METRICS_PORT")
    if not port:
        return None
    addr = os.environ.get("GPUWORKER_METRICS_ADDR") or "127.0.0.1"
    start_http_server(int(port), addr=addr)
    log.info("%s metrics on http://%s:%s/metrics", role, addr, port)
    return int(port)
