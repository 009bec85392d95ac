"""GET /gpu-types, GET /datacenters and every /instances route over HTTP, on the shared simulated
stack (4 RTX 4090 + 2 A100 on one host named after this machine).

Other test files share that host's GPUs, so every instance made here is terminated before its test
ends, and no test here holds more than 3 RTX 4090 or 1 A100 at once."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.api_helpers import assert_error, template_body, user_client, wait_for
from tests.instance_helpers import (
    A100,
    DATACENTER,
    RTX_4090,
    SEED_TEMPLATE,
    availability,
    create_instance,
    get_instance,
    instance,
    instance_body,
    start_when_released,
    terminate,
    wait_gone,
    wait_status,
)
from tests.servers import Stack

HOST_ID = socket.gethostname().split(".")[0]
RTX_4090_SECURE_MICROS = 690_000
INSTANCE_FIELDS = {
    "id",
    "name",
    "status",
    "desiredStatus",
    "actions",
    "gpuTypeId",
    "gpuCount",
    "vcpuCount",
    "memoryInGb",
    "cloudType",
    "dataCenterId",
    "hostId",
    "templateId",
    "imageName",
    "dockerStartCmd",
    "env",
    "ports",
    "containerDiskInGb",
    "volumeInGb",
    "volumeMountPath",
    "networkVolumeId",
    "costPerHr",
    "costPerHrMicros",
    "diskCostPerHr",
    "diskCostPerHrMicros",
    "costToDate",
    "costToDateMicros",
    "rateCardVersion",
    "createdAt",
    "lastStatusChange",
    "failureReason",
    "stopReason",
    "exitCode",
    "hostLost",
    "urls",
    "publicIp",
    "portMappings",
}


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A brand-new user, once the stack's host has registered all its GPUs."""
    with user_client(stack) as c:
        wait_for(lambda: availability(c, RTX_4090)[1] == 4, 20, "the host's 4 RTX 4090")
        wait_for(lambda: availability(c, A100)[1] == 2, 20, "the host's 2 A100")
        yield c


def _running(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    created = create_instance(client, **fields)
    return wait_status(client, created["id"], "RUNNING")


def _ids(client: httpx.Client) -> list[str]:
    response = client.get("/instances")
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()]


# -- catalog ----------------------------------------------------------------------------------


def test_gpu_types_have_prices_and_the_hosts_gpus(client: httpx.Client) -> None:
    response = client.get("/gpu-types")
    assert response.status_code == 200, response.text
    gpus = {g["id"]: g for g in response.json()}
    assert {RTX_4090, A100} <= gpus.keys()
    rtx = gpus[RTX_4090]
    assert rtx["securePrice"] == 0.69
    assert rtx["securePriceMicros"] == RTX_4090_SECURE_MICROS
    assert rtx["displayName"] and rtx["memoryInGb"] == 24
    assert rtx["rateCardVersion"]
    for gpu_type, total in ((RTX_4090, 4), (A100, 2)):
        rows = [r for r in gpus[gpu_type]["availability"] if r["dataCenterId"] == DATACENTER]
        assert len(rows) == 1, gpus[gpu_type]
        assert rows[0]["cloudType"] == "SECURE"
        assert rows[0]["total"] == total
        assert 0 <= rows[0]["available"] <= total
    # A type no host has is listed with its prices and no availability.
    others = [g for g in gpus.values() if g["id"] not in (RTX_4090, A100)]
    assert others and all(g["availability"] == [] for g in others)


def test_datacenters_show_the_hosts_gpus(client: httpx.Client) -> None:
    response = client.get("/datacenters")
    assert response.status_code == 200, response.text
    centers = {d["id"]: d for d in response.json()}
    tx = centers[DATACENTER]
    assert tx["name"] and tx["country"] == "US"
    assert tx["hosts"] == 1
    assert tx["gpusTotal"] == 6
    assert 0 <= tx["gpusAvailable"] <= 6
    for other in set(centers) - {DATACENTER}:
        assert centers[other]["hosts"] == 0 and centers[other]["gpusTotal"] == 0, centers[other]


def test_a_running_instance_is_counted_as_taken(client: httpx.Client) -> None:
    with instance(client, gpuTypeId=A100) as created:
        wait_status(client, created["id"], "RUNNING")
        available, total = availability(client, A100)
        assert total == 2 and available <= 1
        tx = next(d for d in client.get("/datacenters").json() if d["id"] == DATACENTER)
        assert tx["gpusAvailable"] <= 5


# -- create -----------------------------------------------------------------------------------


def test_create_with_the_seed_body(client: httpx.Client) -> None:
    body = instance_body()
    response = client.post("/instances", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    try:
        assert set(created) == INSTANCE_FIELDS
        assert isinstance(created["id"], str) and created["id"]
        assert created["name"] == body["name"]
        assert created["status"] in ("PENDING", "PROVISIONING", "RUNNING")
        assert created["desiredStatus"] == "RUNNING"
        assert "terminate" in created["actions"] and "start" not in created["actions"]
        assert created["gpuTypeId"] == RTX_4090
        assert created["gpuCount"] == 1
        assert created["cloudType"] == "SECURE"
        assert created["dataCenterId"] == DATACENTER
        assert created["hostId"] == HOST_ID
        assert created["templateId"] == SEED_TEMPLATE
        # The template's settings are copied onto the instance.
        assert created["imageName"] == "nvcr.io/nvidia/pytorch:2.1.0-py3.10-cuda12.1"
        assert created["ports"] == ["8888/http", "22/tcp"]
        assert created["containerDiskInGb"] == 20
        assert created["volumeInGb"] == 50
        assert created["volumeMountPath"] == "/workspace"
        assert created["costPerHr"] == 0.69
        assert created["costPerHrMicros"] == RTX_4090_SECURE_MICROS
        assert created["failureReason"] is None and created["exitCode"] is None
        assert created["hostLost"] is False
        created_at = datetime.fromisoformat(created["createdAt"])
        changed_at = datetime.fromisoformat(created["lastStatusChange"])
        assert created_at.tzinfo is not None and changed_at >= created_at
        # Read-your-writes: the GET right after the 201 shows the instance.
        assert get_instance(client, created["id"])["name"] == body["name"]
        assert created["id"] in _ids(client)

        running = wait_status(client, created["id"], "RUNNING")
        assert running["actions"] == ["stop", "restart", "terminate"]
        assert running["desiredStatus"] == "RUNNING"
        assert datetime.fromisoformat(running["lastStatusChange"]) >= changed_at
        assert running["createdAt"] == created["createdAt"]
    finally:
        terminate(client, created["id"])


def test_cost_is_per_gpu_times_gpu_count(client: httpx.Client) -> None:
    with instance(client, gpuCount=2) as two:
        assert two["gpuCount"] == 2
        assert two["costPerHrMicros"] == 2 * RTX_4090_SECURE_MICROS
        assert two["costPerHr"] == 1.38
    prices = {g["id"]: g for g in client.get("/gpu-types").json()}
    with instance(client, gpuTypeId=A100, cloudType="SECURE") as a100:
        assert a100["costPerHrMicros"] == prices[A100]["securePriceMicros"]
        assert a100["costPerHr"] == prices[A100]["securePrice"]


def test_create_overrides_template_settings(client: httpx.Client) -> None:
    with instance(
        client,
        env={"HELLO": "world"},
        ports=["9000/http"],
        containerDiskInGb=30,
        volumeInGb=0,
        volumeMountPath="/data",
    ) as created:
        assert created["env"] == {"HELLO": "world"}
        assert created["ports"] == ["9000/http"]
        assert created["containerDiskInGb"] == 30
        assert created["volumeInGb"] == 0
        assert created["volumeMountPath"] == "/data"


@pytest.mark.parametrize(
    ("fields", "mention"),
    [
        ({"gpuTypeId": "NVIDIA GeForce GTX 480"}, "gpuTypeId"),
        ({"templateId": "no-such-template"}, "templateId"),
        ({"templateId": str(uuid.uuid4())}, "templateId"),
        ({"cloudType": "ORBITAL"}, "cloudType"),
        ({"gpuCount": 0}, "gpuCount"),
        ({"gpuCount": 9}, "gpuCount"),
        ({"dataCenterId": "MARS-1"}, "dataCenterId"),
        ({"name": ""}, "name"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_create_rejects_bad_fields(
    client: httpx.Client, fields: dict[str, Any], mention: str
) -> None:
    before = _ids(client)
    response = client.post("/instances", json=instance_body(**fields))
    assert_error(response, 400, mention)
    assert _ids(client) == before


@pytest.mark.parametrize("missing", ["name", "gpuTypeId", "templateId"])
def test_create_requires_the_seed_fields(client: httpx.Client, missing: str) -> None:
    body = instance_body()
    del body[missing]
    assert_error(client.post("/instances", json=body), 400, missing)


def test_another_users_template_does_not_exist_for_you(stack: Stack, client: httpx.Client) -> None:
    with user_client(stack) as owner:
        response = owner.post("/templates", json=template_body(imageName="local/busybox:latest"))
        assert response.status_code == 201, response.text
        template_id = response.json()["id"]
        # Its owner may use it ...
        with instance(owner, templateId=template_id) as mine:
            assert mine["templateId"] == template_id
            assert mine["imageName"] == "local/busybox:latest"
    # ... nobody else may.
    assert_error(
        client.post("/instances", json=instance_body(templateId=template_id)), 400, "templateId"
    )
    assert _ids(client) == []


def test_no_capacity_is_409(client: httpx.Client) -> None:
    # The host has 4 RTX 4090: 8 never fit, whatever other tests hold.
    response = client.post("/instances", json=instance_body(gpuCount=8))
    assert_error(response, 409, "no capacity")
    # A known data center without hosts has no capacity either.
    response = client.post("/instances", json=instance_body(dataCenterId="EU-SE-1"))
    assert_error(response, 409, "no capacity")
    assert _ids(client) == []


# -- lifecycle --------------------------------------------------------------------------------


def test_stop_start_restart(client: httpx.Client) -> None:
    with instance(client) as created:
        instance_id = created["id"]
        wait_status(client, instance_id, "RUNNING")

        response = client.post(f"/instances/{instance_id}/stop")
        assert response.status_code == 200, response.text
        stopping = response.json()
        assert stopping["status"] == "STOPPING"
        assert stopping["desiredStatus"] == "STOPPED"
        stopped = wait_status(client, instance_id, "STOPPED")
        assert stopped["actions"] == ["start", "terminate"]
        assert stopped["desiredStatus"] == "STOPPED"

        assert_error(client.post(f"/instances/{instance_id}/stop"), 409, "STOPPED")
        assert_error(client.post(f"/instances/{instance_id}/restart"), 409, "STOPPED")

        # The stopped instance's lease is released asynchronously: start may briefly find no GPU.
        response = start_when_released(client, instance_id)
        assert response.status_code == 200, response.text
        started = response.json()
        assert started["status"] in ("PENDING", "PROVISIONING", "RUNNING")
        assert started["desiredStatus"] == "RUNNING"
        assert started["hostId"] == created["hostId"]
        running = wait_status(client, instance_id, "RUNNING")
        assert running["desiredStatus"] == "RUNNING"

        assert_error(client.post(f"/instances/{instance_id}/start"), 409, "RUNNING")

        response = client.post(f"/instances/{instance_id}/restart")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "RESTARTING"
        assert response.json()["desiredStatus"] == "RUNNING"
        wait_status(client, instance_id, "RUNNING")

        # Stopping and starting the same instance again works: GPUs go back and come back.
        assert client.post(f"/instances/{instance_id}/stop").status_code == 200
        wait_status(client, instance_id, "STOPPED")
        response = start_when_released(client, instance_id)
        assert response.status_code == 200, response.text
        wait_status(client, instance_id, "RUNNING")


def test_patch_renames_and_reconfigures(client: httpx.Client) -> None:
    with instance(client) as created:
        instance_id = created["id"]
        wait_status(client, instance_id, "RUNNING")

        response = client.patch(f"/instances/{instance_id}", json={"name": "renamed"})
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "renamed"
        assert response.json()["status"] == "RUNNING"
        fetched = get_instance(client, instance_id)
        assert fetched["name"] == "renamed" and fetched["status"] == "RUNNING"

        response = client.patch(f"/instances/{instance_id}", json={"containerDiskInGb": 5})
        message = assert_error(response, 400, "containerDiskInGb")
        assert "only grow" in message
        response = client.patch(f"/instances/{instance_id}", json={"volumeInGb": 1})
        assert "only grow" in assert_error(response, 400, "volumeInGb")
        assert get_instance(client, instance_id)["containerDiskInGb"] == 20

        response = client.patch(f"/instances/{instance_id}", json={"containerDiskInGb": 40})
        assert response.status_code == 200, response.text
        assert response.json()["containerDiskInGb"] == 40

        response = client.patch(f"/instances/{instance_id}", json={"env": {"A": "1", "B": "two"}})
        assert response.status_code == 200, response.text
        assert response.json()["env"] == {"A": "1", "B": "two"}
        assert get_instance(client, instance_id)["env"] == {"A": "1", "B": "two"}
        # The new env reaches the container (recreated on the same disk): it keeps running.
        assert wait_status(client, instance_id, "RUNNING")["name"] == "renamed"

        assert_error(client.patch(f"/instances/{instance_id}", json={"gpuCount": 2}), 400)
        assert_error(client.patch(f"/instances/{instance_id}", json={"name": ""}), 400, "name")


def test_delete_terminates(client: httpx.Client) -> None:
    created = create_instance(client)
    instance_id = created["id"]
    try:
        wait_status(client, instance_id, "RUNNING")
    finally:
        response = client.delete(f"/instances/{instance_id}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    wait_gone(client, instance_id)
    assert instance_id not in _ids(client)
    # Gone means gone on every route.
    assert_error(client.get(f"/instances/{instance_id}"), 404)
    assert_error(client.post(f"/instances/{instance_id}/start"), 404)
    assert_error(client.patch(f"/instances/{instance_id}", json={"name": "x"}), 404)
    assert_error(client.delete(f"/instances/{instance_id}"), 404)


def test_delete_a_stopped_instance(client: httpx.Client) -> None:
    created = create_instance(client)
    instance_id = created["id"]
    try:
        wait_status(client, instance_id, "RUNNING")
        assert client.post(f"/instances/{instance_id}/stop").status_code == 200
        wait_status(client, instance_id, "STOPPED")
    finally:
        assert client.delete(f"/instances/{instance_id}").status_code == 204
    wait_gone(client, instance_id)


@pytest.mark.parametrize("instance_id", ["no-such-instance", str(uuid.uuid4()), "%20"])
def test_unknown_instance_is_404(client: httpx.Client, instance_id: str) -> None:
    assert_error(client.get(f"/instances/{instance_id}"), 404)
    assert_error(client.patch(f"/instances/{instance_id}", json={"name": "x"}), 404)
    assert_error(client.delete(f"/instances/{instance_id}"), 404)
    for action in ("start", "stop", "restart"):
        assert_error(client.post(f"/instances/{instance_id}/{action}"), 404)


# -- isolation and idempotency ----------------------------------------------------------------


def test_another_users_instance_does_not_exist_for_you(stack: Stack, client: httpx.Client) -> None:
    with instance(client) as created, user_client(stack) as other:
        instance_id = created["id"]
        wait_status(client, instance_id, "RUNNING")
        assert instance_id not in _ids(other)
        assert_error(other.get(f"/instances/{instance_id}"), 404)
        assert_error(other.patch(f"/instances/{instance_id}", json={"name": "mine now"}), 404)
        assert_error(other.delete(f"/instances/{instance_id}"), 404)
        for action in ("start", "stop", "restart"):
            assert_error(other.post(f"/instances/{instance_id}/{action}"), 404)
        # Nothing the other user tried had any effect.
        mine = get_instance(client, instance_id)
        assert mine["status"] == "RUNNING" and mine["name"] == created["name"]
        assert _ids(client) == [instance_id]


def test_idempotency_key_on_create(client: httpx.Client) -> None:
    key = {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    body = instance_body()
    first = client.post("/instances", json=body, headers=key)
    assert first.status_code == 201, first.text
    try:
        again = client.post("/instances", json=body, headers=key)
        assert again.status_code == 201, again.text
        assert again.json() == first.json()
        assert _ids(client) == [first.json()["id"]]

        other = client.post("/instances", json=instance_body(), headers=key)
        assert_error(other, 409)
        assert _ids(client) == [first.json()["id"]]

        # A new key is a new instance.
        second = client.post(
            "/instances", json=body, headers={"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
        )
        assert second.status_code == 201, second.text
        terminate(client, second.json()["id"])
    finally:
        terminate(client, first.json()["id"])
    assert _ids(client) == []
