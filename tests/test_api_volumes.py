"""Every /volumes route over HTTP, and instances that mount a network volume, on the shared
simulated stack (one host in US-TX-3, the only data center with a host).

Other test files share that host's GPUs: no test here holds more than one RTX 4090 at a time, and
each test's user has every instance and volume it made deleted before the test ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api_helpers import assert_error, user_client, wait_for
from tests.instance_helpers import (
    BUSYBOX_TEMPLATE,
    RTX_4090,
    availability,
    create_instance,
    instance,
    instance_body,
    terminate,
    wait_status,
)
from tests.servers import Stack
from tests.volume_helpers import (
    VOLUME_DATACENTER,
    create_volume,
    delete_volume,
    get_volume,
    volume_body,
    volume_ids,
    wait_volume,
    wait_volume_gone,
)

VOLUME_FIELDS = {
    "id",
    "name",
    "size",
    "dataCenterId",
    "status",
    "createdAt",
    "costPerMonth",
    "attachedInstances",
}


def _clean_up(client: httpx.Client) -> None:
    """Terminate the user's instances, then delete its volumes, and wait for both."""
    response = client.get("/instances")
    assert response.status_code == 200, response.text
    for found in response.json():
        terminate(client, found["id"])
    for volume_id in volume_ids(client):
        wait_volume(client, volume_id, attachedInstances=[])
        delete_volume(client, volume_id)
    assert volume_ids(client) == []


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A brand-new user, once the stack's host has registered (it is the storage host too)."""
    with user_client(stack) as c:
        wait_for(lambda: availability(c, RTX_4090)[1] == 4, 20, "the host's 4 RTX 4090")
        yield c
        _clean_up(c)


def _busybox(**fields: Any) -> dict[str, Any]:
    return instance_body(templateId=BUSYBOX_TEMPLATE, gpuTypeId=RTX_4090, **fields)


def _instance_ids(client: httpx.Client) -> list[str]:
    response = client.get("/instances")
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()]


# -- create, read, update -----------------------------------------------------------------------


def test_create_with_the_seed_body(client: httpx.Client) -> None:
    body = {"name": "training-data", "size": 100, "dataCenterId": "US-TX-3"}
    response = client.post("/volumes", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created.keys() >= VOLUME_FIELDS, created
    assert created["id"] and isinstance(created["id"], str)
    assert created["name"] == "training-data"
    assert created["size"] == 100
    assert created["dataCenterId"] == "US-TX-3"
    assert created["status"] in ("CREATING", "AVAILABLE"), created
    assert created["attachedInstances"] == []
    # 100 GB at $0.07 per GB-month.
    assert created["costPerMonth"] == 7.0
    assert created["costPerMonthMicros"] == 7_000_000
    created_at = datetime.fromisoformat(created["createdAt"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=5), created_at

    # The storage host makes it: it becomes AVAILABLE, and reads show it.
    available = wait_volume(client, created["id"], status="AVAILABLE")
    assert {k: v for k, v in available.items() if k != "status"} == {
        k: v for k, v in created.items() if k != "status"
    }
    listed = client.get("/volumes")
    assert listed.status_code == 200, listed.text
    assert listed.json() == [available]


def test_rename_and_grow(client: httpx.Client) -> None:
    volume_id = create_volume(client, size=100)["id"]
    wait_volume(client, volume_id, status="AVAILABLE")

    renamed = client.patch(f"/volumes/{volume_id}", json={"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "renamed" and renamed.json()["size"] == 100
    assert get_volume(client, volume_id)["name"] == "renamed"

    grown = client.patch(f"/volumes/{volume_id}", json={"size": 250})
    assert grown.status_code == 200, grown.text
    assert grown.json()["size"] == 250
    assert grown.json()["costPerMonth"] == 17.5
    assert grown.json()["costPerMonthMicros"] == 17_500_000
    after = get_volume(client, volume_id)
    assert after["size"] == 250 and after["name"] == "renamed"

    # Both at once; the same size again is no change.
    both = client.patch(f"/volumes/{volume_id}", json={"name": "both", "size": 300})
    assert both.status_code == 200, both.text
    assert (both.json()["name"], both.json()["size"]) == ("both", 300)
    same = client.patch(f"/volumes/{volume_id}", json={"size": 300})
    assert same.status_code == 200, same.text
    assert same.json()["size"] == 300


def test_volumes_only_grow(client: httpx.Client) -> None:
    volume_id = create_volume(client, size=200)["id"]
    message = assert_error(client.patch(f"/volumes/{volume_id}", json={"size": 150}), 400, "size")
    assert "only grow" in message, message
    # A shrink with a rename changes nothing at all.
    assert_error(
        client.patch(f"/volumes/{volume_id}", json={"name": "x", "size": 10}), 400, "only grow"
    )
    after = get_volume(client, volume_id)
    assert after["size"] == 200 and after["name"] != "x"


@pytest.mark.parametrize("size", [9, 4001, "abc", 0, -1, 100.5, None])
def test_a_bad_size_is_a_bad_request_naming_size(client: httpx.Client, size: Any) -> None:
    assert_error(client.post("/volumes", json=volume_body(size=size)), 400, "size")
    assert volume_ids(client) == []


@pytest.mark.parametrize("size", [9, 4001, "abc"])
def test_a_bad_size_on_update_is_a_bad_request_naming_size(client: httpx.Client, size: Any) -> None:
    volume_id = create_volume(client)["id"]
    assert_error(client.patch(f"/volumes/{volume_id}", json={"size": size}), 400, "size")
    assert get_volume(client, volume_id)["size"] == 100


def test_the_largest_and_smallest_sizes(client: httpx.Client) -> None:
    smallest = create_volume(client, size=10)
    assert smallest["size"] == 10 and smallest["costPerMonth"] == 0.7
    largest = create_volume(client, size=4000)
    # The first TB at $0.07 per GB-month, the other 3,000 GB at $0.05.
    assert largest["size"] == 4000 and largest["costPerMonth"] == 70.0 + 150.0


def test_missing_or_blank_fields_are_bad_requests(client: httpx.Client) -> None:
    for field in ("name", "size", "dataCenterId"):
        body = volume_body()
        del body[field]
        assert_error(client.post("/volumes", json=body), 400, field)
    assert_error(client.post("/volumes", json=volume_body(name="")), 400, "name")
    assert volume_ids(client) == []


def test_an_unknown_data_center_is_a_bad_request(client: httpx.Client) -> None:
    assert_error(
        client.post("/volumes", json=volume_body(dataCenterId="MARS-1")), 400, "dataCenterId"
    )
    assert volume_ids(client) == []


def test_a_data_center_without_a_host_is_a_conflict(client: httpx.Client) -> None:
    message = assert_error(client.post("/volumes", json=volume_body(dataCenterId="EU-SE-1")), 409)
    assert "EU-SE-1" in message, message
    assert volume_ids(client) == []


def test_unknown_volumes_are_not_found(client: httpx.Client) -> None:
    for volume_id in (str(uuid.uuid4()), "not-an-id"):
        assert_error(client.get(f"/volumes/{volume_id}"), 404)
        assert_error(client.patch(f"/volumes/{volume_id}", json={"name": "x"}), 404)
        assert_error(client.delete(f"/volumes/{volume_id}"), 404)


# -- delete -------------------------------------------------------------------------------------


def test_delete_loses_the_data_and_the_volume_goes(client: httpx.Client) -> None:
    volume_id = create_volume(client)["id"]
    wait_volume(client, volume_id, status="AVAILABLE")
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["id"] == volume_id
    assert body["status"] in ("DELETING", "DELETED"), body
    assert "permanently lost" in body["message"], body
    wait_volume_gone(client, volume_id)
    assert volume_id not in volume_ids(client)
    assert_error(client.patch(f"/volumes/{volume_id}", json={"size": 500}), 404)
    assert_error(client.delete(f"/volumes/{volume_id}"), 404)


def test_a_volume_being_deleted_cannot_be_changed(client: httpx.Client) -> None:
    volume_id = create_volume(client)["id"]
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    # Still DELETING (409) or already gone (404): never a successful change.
    patched = client.patch(f"/volumes/{volume_id}", json={"size": 500})
    assert patched.status_code in (404, 409), patched.text
    assert_error(patched, patched.status_code)
    wait_volume_gone(client, volume_id)


# -- instances mounting a volume ----------------------------------------------------------------


def test_an_attached_volume_cannot_be_deleted_until_its_instance_is_gone(
    client: httpx.Client,
) -> None:
    volume_id = create_volume(client)["id"]
    wait_volume(client, volume_id, status="AVAILABLE")
    with instance(client, **_busybox(networkVolumeId=volume_id)) as created:
        instance_id = created["id"]
        assert created["networkVolumeId"] == volume_id
        assert created["dataCenterId"] == VOLUME_DATACENTER
        assert created["volumeMountPath"] == "/workspace"
        wait_status(client, instance_id, "RUNNING")

        attached = get_volume(client, volume_id)
        assert attached["attachedInstances"] == [instance_id]
        assert [v["attachedInstances"] for v in client.get("/volumes").json()] == [[instance_id]]

        message = assert_error(client.delete(f"/volumes/{volume_id}"), 409, instance_id)
        assert volume_id in message or "attached" in message, message
        still = get_volume(client, volume_id)
        assert still["status"] == "AVAILABLE"
        assert still["attachedInstances"] == [instance_id]
    # The instance is gone (terminate waited for its 404): the volume lets go of it.
    assert_error(client.get(f"/instances/{instance_id}"), 404)
    wait_volume(client, volume_id, attachedInstances=[])
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    wait_volume_gone(client, volume_id)


def test_two_instances_on_one_volume_are_both_named(client: httpx.Client) -> None:
    volume_id = create_volume(client)["id"]
    first = create_instance(client, **_busybox(networkVolumeId=volume_id))
    try:
        wait_status(client, first["id"], "RUNNING")
        # Stopped, it gives its GPU back (one RTX 4090 at a time here) but stays attached.
        response = client.post(f"/instances/{first['id']}/stop")
        assert response.status_code == 200, response.text
        wait_status(client, first["id"], "STOPPED")
        with instance(client, **_busybox(networkVolumeId=volume_id)) as second:
            both = sorted([first["id"], second["id"]])
            wait_for(
                lambda: sorted(get_volume(client, volume_id)["attachedInstances"]) == both,
                10,
                "both instances attached",
            )
            message = assert_error(client.delete(f"/volumes/{volume_id}"), 409)
            assert first["id"] in message and second["id"] in message, message
        wait_volume(client, volume_id, attachedInstances=[first["id"]])
        assert_error(client.delete(f"/volumes/{volume_id}"), 409, first["id"])
    finally:
        terminate(client, first["id"])
    wait_volume(client, volume_id, attachedInstances=[])
    delete_volume(client, volume_id)


def test_the_attachment_is_visible_as_soon_as_the_create_answers(client: httpx.Client) -> None:
    """DESIGN: a GET issued after a write's response has arrived shows that write. Creating an
    instance on a volume attaches it (placement's AttachVolume, before the instance exists), so
    the volume read right after POST /instances answers must list the instance."""
    volume_id = create_volume(client)["id"]
    with instance(client, **_busybox(networkVolumeId=volume_id)) as created:
        assert get_volume(client, volume_id)["attachedInstances"] == [created["id"]]
        listed = client.get("/volumes")
        assert listed.status_code == 200, listed.text
        assert [v["attachedInstances"] for v in listed.json()] == [[created["id"]]]


def test_a_volume_in_another_data_center_is_a_bad_request(client: httpx.Client) -> None:
    volume_id = create_volume(client, dataCenterId=VOLUME_DATACENTER)["id"]
    response = client.post(
        "/instances", json=_busybox(networkVolumeId=volume_id, dataCenterId="US-CA-2")
    )
    message = assert_error(response, 400, "networkVolumeId")
    assert VOLUME_DATACENTER in message and "US-CA-2" in message, message
    assert _instance_ids(client) == []
    assert get_volume(client, volume_id)["attachedInstances"] == []


def test_another_users_or_an_unknown_volume_is_a_bad_request(
    stack: Stack, client: httpx.Client
) -> None:
    with user_client(stack) as other:
        theirs = create_volume(other)["id"]
        try:
            for volume_id in (theirs, str(uuid.uuid4())):
                response = client.post("/instances", json=_busybox(networkVolumeId=volume_id))
                assert_error(response, 400, "networkVolumeId")
            assert _instance_ids(client) == []
            assert get_volume(other, theirs)["attachedInstances"] == []
        finally:
            _clean_up(other)


def test_a_deleted_volume_cannot_be_mounted(client: httpx.Client) -> None:
    volume_id = create_volume(client)["id"]
    response = client.delete(f"/volumes/{volume_id}")
    assert response.status_code == 202, response.text
    # DELETING (the volume refuses the attach) or DELETED (it does not exist any more).
    created = client.post("/instances", json=_busybox(networkVolumeId=volume_id))
    assert created.status_code in (400, 409), created.text
    assert_error(created, created.status_code)
    assert _instance_ids(client) == []
    wait_volume_gone(client, volume_id)
    assert_error(
        client.post("/instances", json=_busybox(networkVolumeId=volume_id)),
        400,
        "networkVolumeId",
    )
    assert _instance_ids(client) == []


# -- isolation and idempotency ------------------------------------------------------------------


def test_another_users_volume_does_not_exist_for_you(stack: Stack, client: httpx.Client) -> None:
    created = create_volume(client)
    volume_id = created["id"]
    wait_volume(client, volume_id, status="AVAILABLE")
    with user_client(stack) as other:
        assert volume_id not in volume_ids(other)
        assert_error(other.get(f"/volumes/{volume_id}"), 404)
        assert_error(other.patch(f"/volumes/{volume_id}", json={"name": "mine now"}), 404)
        assert_error(other.patch(f"/volumes/{volume_id}", json={"size": 500}), 404)
        assert_error(other.delete(f"/volumes/{volume_id}"), 404)
    # Nothing the other user tried had any effect.
    mine = get_volume(client, volume_id)
    assert mine["status"] == "AVAILABLE"
    assert (mine["name"], mine["size"]) == (created["name"], created["size"])
    assert volume_ids(client) == [volume_id]


def test_idempotency_key_on_create(client: httpx.Client) -> None:
    key = {"Idempotency-Key": f"volume-{uuid.uuid4().hex}"}
    body = volume_body()
    first = client.post("/volumes", json=body, headers=key)
    assert first.status_code == 201, first.text
    again = client.post("/volumes", json=body, headers=key)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert volume_ids(client) == [first.json()["id"]]

    other = client.post("/volumes", json=volume_body(), headers=key)
    assert_error(other, 409)
    assert volume_ids(client) == [first.json()["id"]]

    # A new key is a new volume.
    second = client.post(
        "/volumes", json=body, headers={"Idempotency-Key": f"volume-{uuid.uuid4().hex}"}
    )
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first.json()["id"]
    assert sorted(volume_ids(client)) == sorted([first.json()["id"], second.json()["id"]])
