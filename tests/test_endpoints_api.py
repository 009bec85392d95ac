"""/endpoints: create, list, get, change and delete serverless endpoints; every field and bound of
the issue, a 400 naming the field; counts in the responses; a `version` that grows when the
template or env changes (and only then); another user's endpoint is a 404; deleting an endpoint
cancels its queued jobs; the CLI (`gpuworker endpoints …`, `gpuworker jobs …`, and the operator's
`worker-env`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api_helpers import assert_error, template_body
from tests.serverless_helpers import (
    GPU,
    account,
    create_endpoint,
    run,
    sdk_worker,
    status,
    wait_status,
)
from tests.servers import Stack

OTHER_GPU = "NVIDIA A100 80GB PCIe"


def test_create_with_defaults_and_every_field(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    with client:
        plain = create_endpoint(client, name="llama-inference", workersMin=0, workersMax=3)
        assert plain["name"] == "llama-inference"
        assert plain["gpuIds"] == GPU and plain["gpuCount"] == 1
        assert (plain["workersMin"], plain["workersMax"]) == (0, 3)
        assert plain["idleTimeout"] == 5
        assert (plain["scalerType"], plain["scalerValue"]) == ("QUEUE_DELAY", 4)
        assert plain["executionTimeoutMs"] == 600_000
        assert plain["version"] == 1
        counts = ("workersRunning", "workersIdle", "jobsInQueue", "jobsInProgress")
        assert all(plain[c] == 0 for c in counts) and plain["costToDate"] == 0

        volume = client.post(
            "/volumes", json={"name": "weights", "size": 10, "dataCenterId": "US-TX-3"}
        )
        assert volume.status_code == 201, volume.text
        full = create_endpoint(
            client,
            gpuIds=f"{OTHER_GPU}, {GPU}",
            gpuCount=2,
            workersMin=1,
            workersMax=5,
            idleTimeout=3600,
            scalerType="REQUEST_COUNT",
            scalerValue=1,
            executionTimeoutMs=1_000,
            dataCenterId="US-TX-3",
            networkVolumeId=volume.json()["id"],
            env={"MODEL": "llama"},
        )
        assert full["gpuIds"] == f"{OTHER_GPU},{GPU}"  # in order of preference
        assert full["networkVolumeId"] == volume.json()["id"]
        assert full["env"] == {"MODEL": "llama"}
        assert client.get(f"/endpoints/{full['id']}").json()["scalerType"] == "REQUEST_COUNT"
        listed = client.get("/endpoints", params={"limit": 1})
        assert listed.status_code == 200 and len(listed.json()) == 1
        assert 'rel="next"' in listed.headers["link"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"templateId": "no-such-template"}, "templateId"),
        ({"gpuIds": "NVIDIA GeForce GTX 480"}, "gpuIds"),
        ({"gpuIds": f"{GPU},,"}, "gpuIds"),
        ({"gpuIds": f"{GPU},{GPU}"}, "gpuIds"),
        ({"gpuCount": 0}, "gpuCount"),
        ({"gpuCount": 9}, "gpuCount"),
        ({"workersMin": -1}, "workersMin"),
        ({"workersMax": 101}, "workersMax"),
        ({"workersMin": 4, "workersMax": 3}, "workersMin"),
        ({"idleTimeout": 0}, "idleTimeout"),
        ({"idleTimeout": 3601}, "idleTimeout"),
        ({"scalerType": "CPU_LOAD"}, "scalerType"),
        ({"scalerValue": 0}, "scalerValue"),
        ({"executionTimeoutMs": 999}, "executionTimeoutMs"),
        ({"dataCenterId": "MARS-1"}, "dataCenterId"),
        ({"networkVolumeId": "no-such-volume"}, "networkVolumeId"),
        ({"env": {"RUNPOD_AI_API_KEY": "mine"}}, "env"),
        ({"env": {"RUNPOD_WEBHOOK_GET_JOB": "http://example.com/"}}, "env"),
        ({"env": {"not a name": "x"}}, "env"),
        ({"workersMinimum": 1}, "workersMinimum"),
    ],
)
def test_each_bad_field_is_a_400_naming_it(
    serverless_stack: Stack, fields: dict[str, Any], field: str
) -> None:
    _key, client = account(serverless_stack)
    body = {"name": "x", "templateId": "busybox-smoke", "gpuIds": GPU, **fields}
    with client:
        assert_error(client.post("/endpoints", json=body), 400, f"`{field}`")
        existing = create_endpoint(client)
        patched = client.patch(f"/endpoints/{existing['id']}", json=fields)
        assert_error(patched, 400, f"`{field}`")


def test_patch_checks_against_what_is_stored_and_versions_follow_the_container(
    serverless_stack: Stack,
) -> None:
    _key, client = account(serverless_stack)
    with client:
        endpoint = create_endpoint(client, workersMax=2)
        path = f"/endpoints/{endpoint['id']}"
        assert_error(client.patch(path, json={"workersMin": 3}), 400, "`workersMin`", "(2)")
        scaled = client.patch(path, json={"workersMin": 2, "scalerValue": 9, "name": "renamed"})
        assert scaled.status_code == 200, scaled.text
        assert scaled.json()["version"] == 1 and scaled.json()["name"] == "renamed"
        env = client.patch(path, json={"env": {"MODEL": "b"}}).json()
        assert env["version"] == 2 and env["env"] == {"MODEL": "b"}
        assert client.patch(path, json={"env": {"MODEL": "b"}}).json()["version"] == 2
        template = client.post("/templates", json=template_body(env={"T": "1"})).json()
        moved = client.patch(path, json={"templateId": template["id"]}).json()
        assert moved["version"] == 3 and moved["templateId"] == template["id"]
        # The template changed since: sending its id again picks it up as a new version.
        client.patch(f"/templates/{template['id']}", json={"env": {"T": "2"}})
        assert client.patch(path, json={"templateId": template["id"]}).json()["version"] == 4
        assert client.get(path).json()["version"] == 4


def test_another_users_endpoint_and_jobs_do_not_exist(serverless_stack: Stack) -> None:
    _key, owner = account(serverless_stack)
    _key2, stranger = account(serverless_stack)
    with owner, stranger:
        endpoint = create_endpoint(owner)
        job_id = run(owner, endpoint["id"], {"secret": 1})
        base = f"/endpoints/{endpoint['id']}"
        for response in (
            stranger.get(base),
            stranger.patch(base, json={"name": "mine"}),
            stranger.delete(base),
            stranger.post(f"{base}/run", json={"input": {}}),
            stranger.get(f"{base}/status/{job_id}"),
            stranger.post(f"{base}/cancel/{job_id}"),
            stranger.post(f"{base}/purge-queue"),
            stranger.get(f"{base}/health"),
        ):
            assert_error(response, 404)
        assert stranger.get("/endpoints").json() == []
        assert status(owner, endpoint["id"], job_id)["status"] == "IN_QUEUE"


def test_counts_and_delete_cancels_queued_jobs(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    with client:
        endpoint = create_endpoint(client)
        jobs = [run(client, endpoint["id"], {"k": k}) for k in range(2)]
        shown = client.get(f"/endpoints/{endpoint['id']}").json()
        assert (shown["jobsInQueue"], shown["jobsInProgress"]) == (2, 0)
        deleted = client.delete(f"/endpoints/{endpoint['id']}")
        assert deleted.status_code == 204, deleted.text
        assert_error(client.get(f"/endpoints/{endpoint['id']}"), 404)
        for job_id in jobs:
            cancelled = wait_status(
                client, endpoint["id"], job_id, lambda s: s["status"] == "CANCELLED", 20
            )
            assert cancelled["error"] == "its endpoint was deleted"
        assert_error(client.post(f"/endpoints/{endpoint['id']}/run", json={"input": 1}), 404)


def test_idempotent_create(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    body = {"name": "once", "templateId": "busybox-smoke", "gpuIds": GPU}
    with client:
        first = client.post("/endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
        again = client.post("/endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert len(client.get("/endpoints").json()) == 1


def test_cli_endpoints_jobs_and_worker_env(serverless_stack: Stack, tmp_path: Path) -> None:
    key, client = account(serverless_stack)
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "GPUWORKER_API_URL": serverless_stack.url,
        "GPUWORKER_TOKEN": key,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = cli(
        "endpoints", "create", "--name", "cli-ep", "--template", "busybox-smoke",
        "--gpu-ids", GPU, "--workers-max", "2", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    assert endpoint["workersMax"] == 2
    listed = cli("endpoints", "list")
    assert listed.returncode == 0 and "cli-ep" in listed.stdout and "QUEUED" in listed.stdout
    # Its workers by state.
    assert all(word in listed.stdout for word in ("RUNNING", "IDLE", "STARTING", "UNHEALTHY"))
    assert json.loads(cli("endpoints", "get", endpoint["id"], "--json").stdout)["name"] == "cli-ep"

    queued = cli("jobs", "run", endpoint["id"], "--input", '{"prompt": "hi"}', "--json")
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]
    shown = cli("jobs", "status", endpoint["id"], job_id)
    assert shown.returncode == 0 and "IN_QUEUE" in shown.stdout
    cancelled = cli("jobs", "cancel", endpoint["id"], job_id, "--json")
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    bad = cli("jobs", "run", endpoint["id"], "--input", "{not json")
    assert bad.returncode == 1 and "--input is not JSON" in bad.stderr

    # The operator's worker environment works for a real SDK worker.
    operator = {**serverless_stack.env, "XDG_CONFIG_HOME": str(tmp_path)}
    printed = subprocess.run(
        [
            sys.executable, "-m", "services.cli.main", "endpoints", "worker-env",
            endpoint["id"], "w-cli", "--url", serverless_stack.url, "--json",
        ],
        env=operator, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    worker_env = json.loads(printed.stdout)
    assert worker_env["RUNPOD_POD_ID"] == "w-cli"
    assert worker_env["RUNPOD_ENDPOINT_ID"] == endpoint["id"]
    assert worker_env["RUNPOD_WEBHOOK_GET_JOB"].endswith("/job-take/$ID?v=1")
    assert "$RUNPOD_POD_ID/$ID?" in worker_env["RUNPOD_WEBHOOK_POST_OUTPUT"]
    assert worker_env["GPUWORKER_AI_API_KEY"] == worker_env["RUNPOD_AI_API_KEY"]
    with sdk_worker(serverless_stack, endpoint, tmp_path, "w-cli"):
        synced = cli("jobs", "run", endpoint["id"], "--input", '{"n": 1}', "--sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["output"] == {"echo": {"n": 1}, "worker": "w-cli"}

    assert cli("endpoints", "delete", endpoint["id"]).returncode == 0
    gone = cli("endpoints", "get", endpoint["id"])
    assert gone.returncode == 1 and "404" in gone.stderr
    client.close()
