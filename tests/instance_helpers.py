"""Helpers for the /instances tests: the seed's create body, polling an instance's status, GPU
availability from GET /gpu-types, and terminating what a test created."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.api_helpers import wait_for

RTX_4090 = "NVIDIA GeForce RTX 4090"
A100 = "NVIDIA A100 80GB PCIe"
DATACENTER = "US-TX-3"
SEED_TEMPLATE = "pytorch-cuda12-2.1"
BUSYBOX_TEMPLATE = "busybox-smoke"


def instance_body(**fields: Any) -> dict[str, Any]:
    """The seed's POST /instances body, with `fields` added or replaced."""
    return {
        "name": f"inst-{uuid.uuid4().hex[:8]}",
        "gpuTypeId": RTX_4090,
        "cloudType": "SECURE",
        "templateId": SEED_TEMPLATE,
        **fields,
    }


def create_instance(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post("/instances", json=instance_body(**fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def get_instance(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    response = client.get(f"/instances/{instance_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(
    client: httpx.Client, instance_id: str, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll GET /instances/{id} until it shows `status`; the last body seen is in the failure."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = get_instance(client, instance_id)
        return last if last["status"] == status else None

    try:
        found: dict[str, Any] = wait_for(reached, timeout, f"instance {instance_id} {status}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return found


def wait_gone(client: httpx.Client, instance_id: str, timeout: float = 10.0) -> None:
    """Poll until GET is 404 (the agent reported the instance terminated); until then it may only
    show TERMINATING."""

    def gone() -> bool:
        response = client.get(f"/instances/{instance_id}")
        if response.status_code == 404:
            return True
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "TERMINATING", response.text
        return False

    wait_for(gone, timeout, f"instance {instance_id} terminated")


def terminate(client: httpx.Client, instance_id: str, timeout: float = 10.0) -> None:
    """DELETE and wait until the instance is really gone (so its GPUs are free again)."""
    response = client.delete(f"/instances/{instance_id}")
    assert response.status_code in (204, 404), response.text
    wait_gone(client, instance_id, timeout)


@contextmanager
def instance(client: httpx.Client, **fields: Any) -> Iterator[dict[str, Any]]:
    """An instance for the duration of the block, terminated afterwards whatever happened."""
    created = create_instance(client, **fields)
    try:
        yield created
    finally:
        terminate(client, created["id"])


def availability(
    client: httpx.Client, gpu_type_id: str, datacenter: str = DATACENTER, cloud: str = "SECURE"
) -> tuple[int, int]:
    """(available, total) of a GPU type in a data center, from GET /gpu-types."""
    response = client.get("/gpu-types")
    assert response.status_code == 200, response.text
    for gpu in response.json():
        if gpu["id"] == gpu_type_id:
            for row in gpu["availability"]:
                if row["dataCenterId"] == datacenter and row["cloudType"] == cloud:
                    return int(row["available"]), int(row["total"])
            return 0, 0
    raise AssertionError(f"{gpu_type_id!r} is not in GET /gpu-types")


def wait_available(
    client: httpx.Client, gpu_type_id: str, count: int, timeout: float = 20.0
) -> tuple[int, int]:
    """Wait until at least `count` GPUs of the type are free (host registered, leases released)."""

    def enough() -> tuple[int, int] | None:
        free = availability(client, gpu_type_id)
        return free if free[0] >= count else None

    result: tuple[int, int] = wait_for(enough, timeout, f"{count} free {gpu_type_id}")
    return result


def start_when_released(
    client: httpx.Client, instance_id: str, timeout: float = 5.0
) -> httpx.Response:
    """POST start, retried on 409 while the previous lease's release is still on its way."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.post(f"/instances/{instance_id}/start")
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)
