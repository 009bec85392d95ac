"""Billing end to end on real containers: `gpuworker up --runtime docker` with accruals every 2 s.

- An instance runs a few seconds and stops: the GPU seconds billed match the container's own
  StartedAt/FinishedAt from `docker inspect` within a second, and the summary, the export and the
  balance agree to the micro-dollar.
- A customer whose monthly budget is $0.002 sees their RTX 4090 instance stopped by billing, with
  the reason, soon after the budget is spent, and their next create answers 402. How far past the
  budget it went (money, and seconds from crossing the line to the container's stop) is printed.

The containers trap SIGTERM, so a stop takes as long as the control plane does, not Docker's
10 s grace period for a PID 1 that ignores it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from services.agent.runtime import LABEL_INSTANCE
from tests.api_helpers import assert_error, template_body, user_client, wait_for
from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401
from tests.instance_helpers import RTX_4090, availability, get_instance, terminate, wait_status
from tests.servers import Stack
from tests.test_instances_docker import UP_S, docker_stack

ACCRUAL_INTERVAL_S = 2
GPU_PER_HOUR = 690_000  # RTX 4090, SECURE
MONTH = 30 * 24 * 3600
BUDGET_MICROS = 2_000  # $0.002
# Stops within a second of SIGTERM (busybox sh as PID 1 ignores it unless trapped).
START_CMD = "sh -c 'trap \"exit 0\" TERM; echo ready; while true; do sleep 1; done'"


@pytest.fixture(scope="module")
def billing_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> Iterator[Stack]:
    host_id = f"t-billing-{int(time.time() * 1000) % 10**8}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_ACCRUAL_INTERVAL", str(ACCRUAL_INTERVAL_S))
        env.setenv("GPUWORKER_SIGNUP_CREDIT", "5")
        with docker_stack(
            tmp_path_factory.mktemp("billing-docker"), pg_base_uri, docker_client, host_id
        ) as stack:
            yield stack


def _docker_time(value: str) -> datetime:
    """Docker's RFC 3339 with nanoseconds, to microseconds."""
    whole, _, fraction = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


def _container(client: docker.DockerClient, instance_id: str) -> Any:
    found = client.containers.list(
        all=True, filters={"label": f"{LABEL_INSTANCE}={instance_id}"}, ignore_removed=True
    )
    assert len(found) == 1, found
    return found[0]


def _template(client: httpx.Client) -> str:
    body = template_body(
        imageName="local/busybox:latest",
        dockerStartCmd=START_CMD,
        containerDiskInGb=1,
        volumeInGb=0,
    )
    response = client.post("/templates", json=body)
    assert response.status_code == 201, response.text
    template_id: str = response.json()["id"]
    return template_id


def _create(client: httpx.Client, template_id: str) -> httpx.Response:
    return client.post(
        "/instances",
        json={
            "name": "billed",
            "gpuTypeId": RTX_4090,
            "cloudType": "SECURE",
            "templateId": template_id,
            "gpuCount": 1,
        },
    )


def _export(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/billing/export", params={"format": "jsonl"})
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def _settled(client: httpx.Client, instance_id: str) -> list[dict[str, Any]]:
    def posted() -> list[dict[str, Any]] | None:
        response = client.get(
            "/billing/instances", params={"grouping": "instanceId", "instanceId": instance_id}
        )
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()
        return records if records and all(r["posted"] for r in records) else None

    records: list[dict[str, Any]] = wait_for(posted, 20, "the instance's sessions settled")
    return records


def _signed(line: dict[str, Any]) -> int:
    return (1 if line["kind"] == "usage" else -1) * int(line["amount_micros"])


def test_billed_gpu_seconds_match_the_container_and_every_view_agrees(
    billing_stack: Stack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with user_client(billing_stack) as client:
        wait_for(lambda: availability(client, RTX_4090)[1] == 2, 30, "the host's 2 RTX 4090")
        response = _create(client, _template(client))
        assert response.status_code == 201, response.text
        instance_id = response.json()["id"]
        try:
            wait_status(client, instance_id, "RUNNING", UP_S)
            time.sleep(4.5)
            assert client.post(f"/instances/{instance_id}/stop").status_code == 200
            wait_status(client, instance_id, "STOPPED", UP_S)
            state = _container(docker_client, instance_id).attrs["State"]
            started, finished = _docker_time(state["StartedAt"]), _docker_time(state["FinishedAt"])
            records = _settled(client, instance_id)
            lines = _export(client)
        finally:
            terminate(client, instance_id, UP_S)

        real = (finished - started).total_seconds()
        gpu = [line for line in lines if line["meter"] == "instance.gpu"]
        billed = sum(int(line["seconds"]) for line in gpu)
        print(f"\ncontainer ran {real:.3f} s (docker inspect); GPU billed {billed} s")
        assert real > 4
        assert abs(billed - real) <= 1.0, (billed, real)
        assert sum(_signed(line) for line in gpu) == GPU_PER_HOUR * billed // 3600

        stopped_usage = sum(_signed(line) for line in lines if line["product"])
        assert sum(r["amountMicros"] for r in records) == stopped_usage
        assert sum(r["timeBilledMs"] for r in records) == billed * 1000
        balance = client.get("/billing/balance").json()
        assert balance["balanceMicros"] == 5_000_000 - stopped_usage


def test_a_spent_budget_stops_the_instance_and_refuses_the_next_create(
    billing_stack: Stack,
    docker_client: docker.DockerClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    with user_client(billing_stack) as client:
        wait_for(lambda: availability(client, RTX_4090)[0] >= 1, 30, "a free RTX 4090")
        template_id = _template(client)
        response = client.patch("/me", json={"monthlyBudget": BUDGET_MICROS / 1_000_000})
        assert response.status_code == 200, response.text
        assert response.json()["monthlyBudgetMicros"] == BUDGET_MICROS
        response = _create(client, template_id)
        assert response.status_code == 201, response.text
        instance_id = response.json()["id"]
        try:
            wait_status(client, instance_id, "RUNNING", UP_S)
            stopped = wait_status(client, instance_id, "STOPPED", 60)
            assert stopped["stopReason"] and "budget" in stopped["stopReason"], stopped
            assert stopped["desiredStatus"] == "STOPPED"
            state = _container(docker_client, instance_id).attrs["State"]
            started, finished = _docker_time(state["StartedAt"]), _docker_time(state["FinishedAt"])
            _settled(client, instance_id)
            spent = client.get("/billing/balance").json()["monthSpendMicros"]

            # The budget refuses what comes next, naming itself.
            assert_error(_create(client, template_id), 402, "budget")
            assert_error(client.post(f"/instances/{instance_id}/start"), 402, "budget")
            assert get_instance(client, instance_id)["status"] == "STOPPED"
        finally:
            terminate(client, instance_id, UP_S)

    disk_gb = 1
    per_second = GPU_PER_HOUR / 3600 + 100_000 * disk_gb / MONTH
    crossing = math.ceil(BUDGET_MICROS / per_second)
    ran = (finished - started).total_seconds()
    overshoot = spent - BUDGET_MICROS
    late = ran - crossing
    print(
        f"\nbudget ${BUDGET_MICROS / 1e6:.6f}: crossed {crossing} s after the start; the container"
        f" ran {ran:.3f} s, so it stopped {late:.3f} s after crossing (accruals every"
        f" {ACCRUAL_INTERVAL_S} s); spent ${spent / 1e6:.6f}, {overshoot} micro-USD past the budget"
    )
    (tmp_path / "overshoot.json").write_text(
        json.dumps({"late_s": late, "overshoot_micros": overshoot, "spent_micros": spent})
    )
    assert spent >= BUDGET_MICROS
    # Bounded by the accrual interval, plus the stop's trip through the deciders and the agent.
    assert 0 <= late <= ACCRUAL_INTERVAL_S + 6, late
    assert overshoot <= math.ceil((ACCRUAL_INTERVAL_S + 6) * per_second), overshoot
    assert datetime.now(UTC) > finished
