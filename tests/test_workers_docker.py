"""Serverless workers as real containers: `gpuworker up --runtime docker` with the autoscaler, the
busybox worker of examples/workers/ as the template's start command in `local/busybox:latest`,
and the runpod SDK (unchanged) as the client.

The api listens on 127.0.0.1 only; a worker reaches it through the agent's relay on its tenant
network's gateway (discovered from Docker at run time: no address is written here).

- 20 jobs on workersMin 0 / workersMax 3: all complete, never more than 3 worker containers at
  once, all gone after idleTimeout; each worker's billed seconds match its container's start and
  end as Docker recorded them (its `start` and `die` events: the containers are removed once
  stopped) within a second.
- `docker kill` of the worker running a job: the job completes on another worker, once; the
  killed worker's stop is `unexpected`, with its exit code.
- cancel and purge of jobs taken or queued by container workers.
- A crash-looping template: the endpoint shows `unhealthy` with the reason."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import runpod

from events.endpoint import WorkerStopped
from events.job import JobTaken
from services.agent.container_limits import NETWORK_PREFIX
from services.agent.runtime import LABEL_HOST, LABEL_INSTANCE
from services.cli.embedded import free_port
from tests.api_helpers import template_body, wait_for
from tests.docker_fixtures import busybox_image, clean_host, docker_client  # noqa: F401
from tests.serverless_helpers import GPU, runpod_sdk, status, wait_status
from tests.servers import Stack, running_stack
from tests.worker_helpers import (
    AUTOSCALED_ENV,
    assert_unhealthy,
    endpoint,
    endpoint_events,
    job_events,
    ledger_verify,
    me,
    worker_sessions,
    workers_of,
)

pytestmark = pytest.mark.timeout(300)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workers"
WORKER_SH = EXAMPLES / "busybox" / "worker.sh"
GPUS = f"{GPU}:4"


@contextmanager
def docker_workers_stack(
    tmp: Path, pg_base_uri: str, client: docker.DockerClient, host_id: str
) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUWORKER_HOST_ID", host_id)
        env.setenv("GPUWORKER_WORKER_RELAY_PORT", str(free_port()))
        for name, value in AUTOSCALED_ENV.items():
            env.setenv(name, value)
        try:
            with running_stack(tmp, pg_base_uri, runtime="docker", gpus=GPUS) as stack:
                yield stack
        finally:
            clean_host(client, host_id)


@pytest.fixture(scope="module")
def host_id() -> str:
    return f"t-workers-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def docker_workers(
    tmp_path_factory: pytest.TempPathFactory,
    pg_base_uri: str,
    docker_client: docker.DockerClient,  # noqa: F811
    busybox_image: str,  # noqa: F811
    host_id: str,
) -> Iterator[Stack]:
    with docker_workers_stack(
        tmp_path_factory.mktemp("workers-docker"), pg_base_uri, docker_client, host_id
    ) as stack:
        yield stack


@pytest.fixture
def sdk(docker_workers: Stack) -> Iterator[tuple[str, httpx.Client]]:
    with runpod_sdk(docker_workers) as pointed:
        yield pointed


def busybox_endpoint(client: httpx.Client, start_cmd: str, **fields: Any) -> dict[str, Any]:
    body = template_body(
        imageName="local/busybox:latest",
        dockerStartCmd=start_cmd,
        containerDiskInGb=1,
        volumeInGb=0,
    )
    response = client.post("/templates", json=body)
    assert response.status_code == 201, response.text
    created = client.post(
        "/endpoints",
        json={
            "name": f"ep-{uuid.uuid4().hex[:6]}",
            "templateId": response.json()["id"],
            "gpuIds": GPU,
            **fields,
        },
    )
    assert created.status_code == 201, created.text
    found: dict[str, Any] = created.json()
    return found


def worker_containers(client: docker.DockerClient, host_id: str) -> list[Any]:
    return list(
        client.containers.list(filters={"label": f"{LABEL_HOST}={host_id}"}, ignore_removed=True)
    )


def container_of(client: docker.DockerClient, worker_id: str) -> Any:
    found = client.containers.list(
        all=True, filters={"label": f"{LABEL_INSTANCE}={worker_id}"}, ignore_removed=True
    )
    assert len(found) == 1, found
    return found[0]


def lifetimes(
    client: docker.DockerClient, host_id: str, since: datetime
) -> dict[str, tuple[datetime, datetime]]:
    """Each worker container's start and death as the engine recorded them (its events)."""
    began: dict[str, datetime] = {}
    died: dict[str, datetime] = {}
    for event in client.events(
        since=since,
        # Whole seconds on the wire: one more so the last deaths are in.
        until=int(time.time()) + 2,
        filters={"type": "container", "label": f"{LABEL_HOST}={host_id}"},
        decode=True,
    ):
        worker_id = event["Actor"]["Attributes"].get(LABEL_INSTANCE)
        at = datetime.fromtimestamp(event["timeNano"] / 1e9, UTC)
        if event["status"] == "start":
            began[worker_id] = at
        elif event["status"] == "die":
            died[worker_id] = at
    return {w: (began[w], died[w]) for w in began if w in died}


def test_twenty_jobs_on_at_most_three_containers_gone_after_idle_and_billed_as_docker_ran_them(
    docker_workers: Stack,
    sdk: tuple[str, httpx.Client],
    docker_client: docker.DockerClient,  # noqa: F811
    host_id: str,
) -> None:
    _key, client = sdk
    since = datetime.now(UTC)
    ep = busybox_endpoint(
        client,
        WORKER_SH.read_text(),
        workersMin=0,
        workersMax=3,
        idleTimeout=3,
        scalerType="REQUEST_COUNT",
        scalerValue=2,
    )
    remote = runpod.Endpoint(ep["id"])
    jobs = [remote.run({"n": i, "sleep": 1}) for i in range(20)]
    most = 0
    deadline = time.monotonic() + 150
    outputs: dict[int, Any] = {}
    while len(outputs) < len(jobs):
        assert time.monotonic() < deadline, f"{len(outputs)} of 20 done"
        most = max(most, len(worker_containers(docker_client, host_id)))
        for i, job in enumerate(jobs):
            if i not in outputs and job.status() in ("COMPLETED", "FAILED"):
                outputs[i] = job.output()
        time.sleep(0.2)
    assert [outputs[i] for i in range(20)] == [{"n": i, "sleep": 1} for i in range(20)]
    print(f"\nat most {most} worker containers at once")
    assert 2 <= most <= 3

    wait_for(lambda: not worker_containers(docker_client, host_id), 40, "the workers gone")
    assert workers_of(endpoint(client, ep["id"])) == 0
    # From zero again: a new container takes it (not a killed one's take, held by the relay).
    began = time.monotonic()
    again = remote.run({"again": 1})
    assert again.output(timeout=60) == {"again": 1}
    print(f"cold start on Docker: {time.monotonic() - began:.2f} s to the output")
    taken = [
        e.data for e in job_events(docker_workers, again.job_id) if isinstance(e.data, JobTaken)
    ]
    assert len(taken) == 1, taken
    wait_for(lambda: not worker_containers(docker_client, host_id), 40, "the workers gone")

    def closed() -> list[tuple[str, str, datetime, Any]] | None:
        found = worker_sessions(docker_workers, me(client))
        return found if found and all(s[3] is not None for s in found) else None

    sessions = wait_for(closed, 20, "every worker's session closed")
    ran = lifetimes(docker_client, host_id, since)
    assert {s[0] for s in sessions} == set(ran), (sessions, ran)
    for worker_id, _tier, began, ended in sessions:
        start, death = ran[worker_id]
        billed, real = (ended - began).total_seconds(), (death - start).total_seconds()
        print(f"worker {worker_id}: billed {billed:.3f} s, docker ran it {real:.3f} s")
        assert abs(billed - real) <= 1.0 and abs((began - start).total_seconds()) <= 1.0
    ledger_verify(docker_workers)


def test_a_killed_worker_loses_its_job_to_another_worker(
    docker_workers: Stack,
    sdk: tuple[str, httpx.Client],
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    _key, client = sdk
    ep = busybox_endpoint(client, WORKER_SH.read_text(), workersMin=0, workersMax=2, idleTimeout=2)
    job_id = runpod.Endpoint(ep["id"]).run({"sleep": 4, "k": 1}).job_id
    running = wait_status(client, ep["id"], job_id, lambda s: s["status"] == "IN_PROGRESS", 60)
    victim = running["workerId"]
    container = container_of(docker_client, victim)
    # Contained like any customer container: limits, no new privileges, the tenant's network
    # only, and no URL in its env names the host's loopback (it reaches the api via the relay).
    host_config = container.attrs["HostConfig"]
    assert host_config["Memory"] > 0 and host_config["NanoCpus"] > 0 and host_config["PidsLimit"]
    assert any(o.startswith("no-new-privileges") for o in host_config["SecurityOpt"] or [])
    assert not host_config["Privileged"] and host_config["NetworkMode"] != "host"
    networks = list(container.attrs["NetworkSettings"]["Networks"])
    assert len(networks) == 1 and networks[0].startswith(NETWORK_PREFIX), networks
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert "127.0.0.1" not in env["RUNPOD_WEBHOOK_GET_JOB"], env["RUNPOD_WEBHOOK_GET_JOB"]
    container.kill()
    done = wait_status(client, ep["id"], job_id, lambda s: s["status"] == "COMPLETED", 90)
    assert done["output"] == {"sleep": 4, "k": 1}
    assert done["workerId"] != victim, done
    stops = [
        e.data
        for e in endpoint_events(docker_workers, ep["id"])
        if isinstance(e.data, WorkerStopped) and e.data.worker_id == victim
    ]
    assert len(stops) == 1 and stops[0].unexpected and stops[0].exit_code == 137, stops
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)


def test_cancel_and_purge_with_container_workers(
    docker_workers: Stack, sdk: tuple[str, httpx.Client]
) -> None:
    _key, client = sdk
    ep = busybox_endpoint(client, WORKER_SH.read_text(), workersMin=0, workersMax=1, idleTimeout=2)
    remote = runpod.Endpoint(ep["id"])
    long = remote.run({"sleep": 8})
    wait_status(client, ep["id"], long.job_id, lambda s: s["status"] == "IN_PROGRESS", 60)
    queued = [remote.run({"q": i}) for i in range(3)]
    assert remote.purge_queue() == {"removed": 3, "status": "completed"}
    assert all(status(client, ep["id"], q.job_id)["status"] == "CANCELLED" for q in queued)
    assert long.cancel()["status"] == "CANCELLED"
    # The worker is free again: the next job runs.
    assert remote.run_sync({"after": 1}, timeout=60) == {"after": 1}
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)


def test_a_crash_looping_template_is_unhealthy_with_its_reason(
    docker_workers: Stack, sdk: tuple[str, httpx.Client]
) -> None:
    _key, client = sdk
    ep = busybox_endpoint(client, "echo crashing; exit 3", workersMin=1, workersMax=2)

    assert_unhealthy(client, ep["id"], 3, 90)
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)
