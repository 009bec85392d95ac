"""Workers the platform runs, on the simulated runtime, through the whole stack (`gpuworker up` with
the autoscaler): the autoscaler places them on hosts, the agent starts their "containers", whose
simulated workers take jobs through the worker protocol over HTTP, and the ledger bills them from
`WorkerStarted` to `WorkerStopped`.

- 20 jobs on workersMin 0 / workersMax 3: all complete, never more than 3 workers, several used,
  all stopped after idleTimeout; every decision an event with its reason; each worker's ledger
  session is exactly its events' span; `gpuworker ledger verify` is clean.
- workersMin 1 keeps one active worker warm; deleting the endpoint stops it.
- A crash-looping template: the endpoint is unhealthy with the reason, and the autoscaler backs
  off instead of spinning.
- A worker that runs several jobs at once (SIMULATED_WORKER_CONCURRENCY, taken as the SDK's
  JobScaler does: one job-take-batch for its free slots) runs them side by side, never more."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from events.endpoint import WorkerPlaced, WorkerStarted, WorkerStopped, WorkerStopRequested
from events.job import JobCompleted, JobTaken
from tests.api_helpers import assert_error, wait_for
from tests.serverless_helpers import GPU, TEMPLATE, account, create_endpoint, run, status
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

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory, pg_base_uri: str) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("workers-sim"), pg_base_uri, extra_env=AUTOSCALED_ENV
    ) as stack:
        yield stack


@pytest.fixture
def client(autoscaled: Stack) -> Iterator[httpx.Client]:
    _key, c = account(autoscaled)
    with c:
        yield c


def test_twenty_jobs_scale_up_to_workers_max_complete_and_the_workers_stop_when_idle(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(
        client,
        workersMin=0,
        workersMax=3,
        idleTimeout=2,
        scalerType="REQUEST_COUNT",
        scalerValue=2,
        env={"SIMULATED_JOB_MS": "300"},
    )
    jobs = [run(client, ep["id"], {"n": i}) for i in range(20)]
    most = 0
    done: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 90
    while len(done) < len(jobs):
        assert time.monotonic() < deadline, f"{len(done)} of {len(jobs)} jobs done"
        most = max(most, workers_of(endpoint(client, ep["id"])))
        for job_id in jobs:
            if job_id not in done and (found := status(client, ep["id"], job_id))["status"] in (
                "COMPLETED",
                "FAILED",
            ):
                done[job_id] = found
        time.sleep(0.1)
    assert all(d["status"] == "COMPLETED" for d in done.values()), done
    assert [done[j]["output"] for j in jobs] == [{"n": i} for i in range(20)]
    used = {d["workerId"] for d in done.values()}
    assert 2 <= len(used) <= 3, used
    assert most <= 3

    # Idle for idleTimeout: every worker stops, and the endpoint shows none.
    wait_for(lambda: workers_of(endpoint(client, ep["id"])) == 0, 30, "the workers gone")
    # From zero again: the job goes to a new worker, not to a stopped one's last take.
    began = time.monotonic()
    again = run(client, ep["id"], {"again": 1})
    wait_for(lambda: status(client, ep["id"], again)["status"] == "COMPLETED", 30, "the job")
    cold_s = time.monotonic() - began
    taken = [e.data for e in job_events(autoscaled, again) if isinstance(e.data, JobTaken)]
    assert len(taken) == 1 and taken[0].worker_id not in used, (taken, cold_s)
    wait_for(lambda: workers_of(endpoint(client, ep["id"])) == 0, 30, "the workers gone")
    events = endpoint_events(autoscaled, ep["id"])
    placed = [e.data for e in events if isinstance(e.data, WorkerPlaced)]
    started = {e.data.worker_id: e for e in events if isinstance(e.data, WorkerStarted)}
    stopped = {e.data.worker_id: e for e in events if isinstance(e.data, WorkerStopped)}
    asked = [e.data for e in events if isinstance(e.data, WorkerStopRequested)]
    assert len(placed) <= 4 and used <= set(started)
    assert all(p.reason for p in placed), placed
    assert any("scale from zero" in p.reason for p in placed), placed
    assert any(p.reason.startswith("REQUEST_COUNT") for p in placed), placed
    assert {a.reason for a in asked} == {"idle for 2 s"}
    assert set(started) == set(stopped) == {a.worker_id for a in asked}
    assert all(not s.data.unexpected for s in stopped.values())
    assert all(e.actor.startswith("system:agent:") for e in [*started.values(), *stopped.values()])

    # Billed from its start to its stop, as its host saw them, at the flex rate.
    def closed() -> list[tuple[str, str, datetime, Any]] | None:
        found = worker_sessions(autoscaled, me(client))
        ok = len(found) == len(started) and all(s[3] is not None for s in found)
        return found if ok else None

    sessions = wait_for(closed, 20, "every worker's session closed")
    for worker_id, tier, began, ended in sessions:
        assert tier == "flex"
        assert began == started[worker_id].occurred_at
        assert ended == stopped[worker_id].occurred_at
    ledger_verify(autoscaled)


def test_workers_min_keeps_an_active_worker_warm_and_delete_stops_it(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(client, workersMin=1, workersMax=2, idleTimeout=1)
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 1, 30, "a warm worker")
    time.sleep(2.5)  # past idleTimeout: the floor stays
    view = endpoint(client, ep["id"])
    assert workers_of(view) == 1, view
    job = run(client, ep["id"], "hi")
    done = wait_for(
        lambda: (s := status(client, ep["id"], job))["status"] == "COMPLETED" and s, 20, "the job"
    )
    # Its container's logs, from its host's agent; another user's or a stranger's: 404.
    logs = client.get(f"/endpoints/{ep['id']}/workers/{done['workerId']}/logs")
    assert logs.status_code == 200, logs.text
    assert "simulated container started" in logs.text
    assert_error(client.get(f"/endpoints/{ep['id']}/workers/nobody/logs"), 404, "worker")
    _other_key, other = account(autoscaled)
    with other:
        assert_error(other.get(f"/endpoints/{ep['id']}/workers/{done['workerId']}/logs"), 404)

    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)

    def stopped() -> list[WorkerStopped]:
        events = endpoint_events(autoscaled, ep["id"])
        return [e.data for e in events if isinstance(e.data, WorkerStopped)]

    ended = wait_for(stopped, 30, "the warm worker stopped")
    assert [s.reason for s in ended] == ["its endpoint was deleted"]
    events = endpoint_events(autoscaled, ep["id"])
    warm = [e.data for e in events if isinstance(e.data, WorkerPlaced)]
    assert len(warm) == 1 and warm[0].active and warm[0].reason == "workersMin is 1"
    sessions = wait_for(
        lambda: [s for s in worker_sessions(autoscaled, me(client)) if s[3] is not None],
        20,
        "the session closed",
    )
    assert [s[1] for s in sessions] == ["active"]


def test_a_crash_looping_template_is_unhealthy_with_its_reason_and_backs_off(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(client, workersMin=1, workersMax=3, env={"SIMULATED_EXIT_CODE": "3"})

    assert_unhealthy(client, ep["id"], 3, 60)

    # Backoff: 1 s, 2 s, 4 s, 8 s… after each failure, one worker at a time: few in 10 s.
    time.sleep(10)
    events = endpoint_events(autoscaled, ep["id"])
    placed = [e for e in events if isinstance(e.data, WorkerPlaced)]
    assert 3 <= len(placed) <= 7, [p.occurred_at for p in placed]
    gaps = [(b.occurred_at - a.occurred_at).total_seconds() for a, b in itertools.pairwise(placed)]
    assert gaps[-1] >= 2, gaps
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)


def test_a_spent_budget_holds_the_endpoint_at_zero_and_refuses_jobs_until_it_is_raised(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(client, workersMin=1, workersMax=2)
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 1, 30, "a warm worker")
    # $0.002 is about 6 s of an RTX 4090 worker.
    response = client.patch("/me", json={"monthlyBudget": 0.002})
    assert response.status_code == 200, response.text

    def held() -> dict[str, Any] | None:
        view = endpoint(client, ep["id"])
        return view if view["suspendedReason"] and workers_of(view) == 0 else None

    view = wait_for(held, 60, "the endpoint held at zero workers")
    assert "budget" in view["suspendedReason"], view
    assert view["suspendedReason"].endswith("let go once you can pay again"), view
    stops = [
        e.data for e in endpoint_events(autoscaled, ep["id"]) if isinstance(e.data, WorkerStopped)
    ]
    assert len(stops) == 1 and "budget" in stops[0].reason, stops
    # Held: nothing comes up again while the budget is spent.
    time.sleep(2)
    assert workers_of(endpoint(client, ep["id"])) == 0
    assert_error(client.post(f"/endpoints/{ep['id']}/run", json={"input": 1}), 402, "budget")
    assert_error(
        client.post("/endpoints", json={"name": "more", "templateId": TEMPLATE, "gpuIds": GPU}),
        402,
        "budget",
    )

    # Raised: billing lets the endpoint go, and its warm worker comes back.
    response = client.patch("/me", json={"monthlyBudget": 1000})
    assert response.status_code == 200, response.text

    def released() -> bool:
        found = endpoint(client, ep["id"])
        return found["suspendedReason"] is None and found["workersIdle"] == 1

    wait_for(released, 60, "the endpoint let go with its warm worker")
    job = run(client, ep["id"], "paid")
    wait_for(lambda: status(client, ep["id"], job)["status"] == "COMPLETED", 20, "the job")
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)
    ledger_verify(autoscaled)


def test_a_new_version_drains_the_old_workers_and_replaces_them(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(client, workersMin=1, workersMax=2, env={"STAGE": "one"})
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 1, 30, "a warm worker")
    # A long job on the old worker: it finishes there before the worker goes.
    long = run(client, ep["id"], {"sleep": 3})
    wait_for(lambda: status(client, ep["id"], long)["status"] == "IN_PROGRESS", 20, "the job")
    response = client.patch(f"/endpoints/{ep['id']}", json={"env": {"STAGE": "two"}})
    assert response.status_code == 200 and response.json()["version"] == 2, response.text
    done = wait_for(
        lambda: (s := status(client, ep["id"], long))["status"] == "COMPLETED" and s, 30, "done"
    )

    def replaced() -> list[Any] | None:
        events = endpoint_events(autoscaled, ep["id"])
        placed = [e.data for e in events if isinstance(e.data, WorkerPlaced)]
        asked = [e.data for e in events if isinstance(e.data, WorkerStopRequested)]
        return [placed, asked] if len(placed) == 2 and asked else None

    placed, asked = wait_for(replaced, 30, "the old worker replaced")
    assert [p.config_version for p in placed] == [1, 2]
    assert [a.worker_id for a in asked] == [placed[0].worker_id] == [done["workerId"]]
    assert asked[0].reason == "replaced by version 2 of its endpoint"
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 1, 30, "the new worker")
    again = run(client, ep["id"], "v2")
    found = wait_for(
        lambda: (s := status(client, ep["id"], again))["status"] == "COMPLETED" and s, 20, "job"
    )
    assert found["workerId"] == placed[1].worker_id
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)


def test_workers_take_gpus_in_the_endpoints_order_of_preference_and_never_share_one(
    autoscaled: Stack, client: httpx.Client
) -> None:
    # The stack's host has 2 A100s and 4 RTX 4090s (tests/servers.py SIMULATED_GPUS).
    ep = create_endpoint(client, workersMin=3, workersMax=3, gpuIds=f"NVIDIA A100 80GB PCIe,{GPU}")
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 3, 30, "3 warm workers")
    placed = [
        e.data.placement
        for e in endpoint_events(autoscaled, ep["id"])
        if isinstance(e.data, WorkerPlaced)
    ]
    # Placed one after the other: the preferred type while it has free GPUs, then the next.
    assert [p.gpu_type_id for p in placed] == ["NVIDIA A100 80GB PCIe"] * 2 + [GPU]
    uuids = [u for p in placed for u in p.gpu_uuids]
    assert len(uuids) == 3 and len(set(uuids)) == 3, uuids
    assert len({p.lease_id for p in placed}) == 3
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)


def test_a_worker_with_free_slots_takes_several_jobs_and_runs_them_side_by_side(
    autoscaled: Stack, client: httpx.Client
) -> None:
    ep = create_endpoint(
        client,
        workersMin=1,
        workersMax=1,
        env={"SIMULATED_WORKER_CONCURRENCY": "4", "SIMULATED_JOB_MS": "800"},
    )
    wait_for(lambda: endpoint(client, ep["id"])["workersIdle"] == 1, 30, "a warm worker")
    jobs = [run(client, ep["id"], {"n": i}) for i in range(8)]

    def all_completed() -> bool:
        return all(status(client, ep["id"], j)["status"] == "COMPLETED" for j in jobs)

    wait_for(all_completed, 30, "the jobs completed")
    spans: list[tuple[datetime, datetime]] = []
    workers: set[str] = set()
    for job_id in jobs:
        events = job_events(autoscaled, job_id)
        taken = [e for e in events if isinstance(e.data, JobTaken)]
        completed = [e for e in events if isinstance(e.data, JobCompleted)]
        assert len(taken) == len(completed) == 1, events
        workers.add(taken[0].data.worker_id)
        spans.append((taken[0].occurred_at, completed[0].occurred_at))
    assert len(workers) == 1
    # How many ran at each start: the slots were used, and never more than there are.
    overlaps = [sum(1 for a, b in spans if a <= start < b) for start, _end in spans]
    assert 2 <= max(overlaps) <= 4, spans
    assert client.delete(f"/endpoints/{ep['id']}").status_code in (200, 204)
