"""Helpers for the /volumes tests: the seed's create body, polling a volume, deleting one."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.api_helpers import wait_for

VOLUME_DATACENTER = "US-TX-3"
# $0.07 per GB-month on the rate card.
VOLUME_MICROS_PER_GB_MONTH = 70_000


def volume_body(**fields: Any) -> dict[str, Any]:
    """The seed's POST /volumes body (a unique name), with `fields` added or replaced."""
    return {
        "name": f"vol-{uuid.uuid4().hex[:8]}",
        "size": 100,
        "dataCenterId": VOLUME_DATACENTER,
        **fields,
    }


def create_volume(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post("/volumes", json=volume_body(**fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def get_volume(client: httpx.Client, volume_id: str) -> dict[str, Any]:
    response = client.get(f"/volumes/{volume_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def volume_ids(client: httpx.Client) -> list[str]:
    response = client.get("/volumes")
    assert response.status_code == 200, response.text
    return [v["id"] for v in response.json()]


def wait_volume(
    client: httpx.Client, volume_id: str, timeout: float = 15.0, **expected: Any
) -> dict[str, Any]:
    """Poll GET /volumes/{id} until every field in `expected` has its value."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = get_volume(client, volume_id)
        return last if all(last[k] == v for k, v in expected.items()) else None

    try:
        found: dict[str, Any] = wait_for(reached, timeout, f"volume {volume_id} {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return found


def wait_volume_gone(client: httpx.Client, volume_id: str, timeout: float = 15.0) -> None:
    """Poll until GET is 404 (the storage host reported the volume deleted); until then it may
    only show DELETING."""

    def gone() -> bool:
        response = client.get(f"/volumes/{volume_id}")
        if response.status_code == 404:
            return True
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "DELETING", response.text
        return False

    wait_for(gone, timeout, f"volume {volume_id} deleted")


def delete_volume(client: httpx.Client, volume_id: str, timeout: float = 15.0) -> None:
    """DELETE (202, or 404 if already gone) and wait until the volume is really gone."""
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code in (202, 404), response.text
    wait_volume_gone(client, volume_id, timeout)
