"""`/metrics` tells an operator what the fleet is doing, from the read models: GPUs, hosts,
instances by status, projection lag, serverless queues, the ledger's accrual lag."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api_helpers import user_client, wait_for
from tests.serverless_helpers import create_endpoint, run
from tests.servers import Stack

NAMED = (
    "gpuworker_operator_metrics_up",
    "gpuworker_operator_metrics_age_seconds",
    "gpuworker_gpus",
    "gpuworker_hosts",
    "gpuworker_instances",
    "gpuworker_projection_lag_events",
    "gpuworker_projection_halted",
    "gpuworker_projection_checkpoint",
    "gpuworker_job_queue_depth",
    "gpuworker_jobs_in_progress",
    "gpuworker_job_oldest_queued_seconds",
    "gpuworker_ledger_open_sessions",
    "gpuworker_ledger_accrual_lag_seconds",
    "gpuworker_billing_enforcements",
)

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(stack: Stack) -> Samples:
    response = httpx.get(f"{stack.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        values = samples.setdefault(family.name, {})
        for sample in family.samples:
            values[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_each_named_metric_reflects_a_small_workload(stack: Stack) -> None:
    client = user_client(stack)
    created = client.post(
        "/instances",
        json={
            "name": "watched",
            "gpuTypeId": "NVIDIA GeForce RTX 4090",
            "templateId": "busybox-smoke",
        },
    )
    assert created.status_code == 201, created.text
    instance = created.json()
    wait_for(
        lambda: client.get(f"/instances/{instance['id']}").json()["status"] == "RUNNING",
        what="the instance running",
    )
    # No worker may ever start (workersMax 0): the job waits in the queue.
    endpoint = create_endpoint(client, workersMax=0)
    run(client, endpoint["id"], {"n": 1})
    queued_at = time.time()

    def reflected() -> Samples | None:
        samples = scrape(stack)
        depth = samples.get("gpuworker_job_queue_depth", {})
        if depth.get((("endpoint", endpoint["id"]),)) != 1:
            return None
        running = samples["gpuworker_instances"].get((("status", "RUNNING"),), 0)
        return samples if running >= 1 else None

    samples: Samples = wait_for(reflected, timeout=30, what="the workload in /metrics")
    assert set(NAMED) <= set(samples), set(NAMED) - set(samples)
    assert samples["gpuworker_operator_metrics_up"][()] == 1
    assert samples["gpuworker_operator_metrics_age_seconds"][()] < 30
    allocated = sum(
        v for labels, v in samples["gpuworker_gpus"].items() if ("state", "allocated") in labels
    )
    assert allocated >= 1
    assert sum(samples["gpuworker_hosts"].values()) >= 1
    assert samples["gpuworker_projection_checkpoint"][(("projection", "instances"),)] > 0
    assert samples["gpuworker_projection_halted"][(("projection", "instances"),)] == 0
    waited = samples["gpuworker_job_oldest_queued_seconds"][(("endpoint", endpoint["id"]),)]
    assert 0 <= waited <= time.time() - queued_at + 30
    # The running instance's GPU time and disk are open sessions of the ledger.
    assert samples["gpuworker_ledger_open_sessions"][()] >= 1
    assert samples["gpuworker_ledger_accrual_lag_seconds"][()] >= 0
