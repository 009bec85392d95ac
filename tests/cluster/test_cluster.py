"""The production shape, run for real: compose.yaml with the images deploy/build-images makes
(no registry), PostgreSQL, three NATS nodes holding the R3 event stream with fsync on every write,
every role in its own container, and a simulated GPU host's agent.

In order, against one cluster:
1. the README's walkthrough passes from the host;
2. a GPU host joins over the network with only NATS_URL, its NATS login and the secret key,
   registers its GPUs and takes placements, and its login cannot speak for another host;
3. under write load the NATS node leading the event stream is killed and started again: writes
   go on after a short 503 window, nothing acknowledged is lost, and the node catches up;
4. deciders and projector run as two replicas that share the work, and a replica of each is
   killed mid-load: nothing is lost or done twice;
5. PostgreSQL restarts and every role recovers by itself.

Figures are printed (pytest -s shows them) for the closing note."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest

from events.subjects import COMMANDS_ROOT
from services.cli.embedded import free_port
from services.security.host_keys import host_key
from tests.api_helpers import template_body, wait_for
from tests.careful_clients import CarefulClient, Record, careful_load, check_acknowledged
from tests.cluster.compose_cluster import ROOT, Cluster
from tests.instance_helpers import RTX_4090, get_instance, wait_gone, wait_status
from tests.serverless_helpers import GPU, TEMPLATE
from tests.servers import agent_command

# The first test also waits for the images (a first build takes about 3 minutes) and `up`.
pytestmark = pytest.mark.timeout(900)

PASSWORD = "correct horse battery"
JOINING_GPU = "NVIDIA RTX A6000"


def account(cluster: Cluster) -> tuple[str, httpx.Client, dict[str, Any]]:
    email = f"cluster-{uuid.uuid4().hex[:10]}@example.com"
    client = httpx.Client(base_url=cluster.url, timeout=30)
    signed = client.post(
        "/auth/signup", json={"name": "Ada Lovelace", "email": email, "password": PASSWORD}
    )
    assert signed.status_code == 201, signed.text
    tokens: dict[str, Any] = signed.json()
    client.headers["authorization"] = f"Bearer {tokens['access_token']}"
    return email, client, tokens


def availability(client: httpx.Client, gpu_type: str) -> tuple[int, int]:
    """(available, total) of a GPU type over every data center."""
    gpus = client.get("/gpu-types")
    assert gpus.status_code == 200, gpus.text
    gpu = next(g for g in gpus.json() if g["id"] == gpu_type)
    return (
        sum(a["available"] for a in gpu["availability"]),
        sum(a["total"] for a in gpu["availability"]),
    )


def test_the_walkthrough_passes_against_the_cluster(cluster: Cluster) -> None:
    email, client, tokens = account(cluster)
    me = client.get("/me")
    assert me.status_code == 200 and me.json()["email"] == email, me.text

    templates = client.get("/templates")
    assert templates.status_code == 200 and "busybox-smoke" in {t["id"] for t in templates.json()}
    body = template_body(ports=["8888/http"], env={"JUPYTER_TOKEN": "s3cret"})
    first = client.post("/templates", json=body, headers={"idempotency-key": "tpl-1"})
    again = client.post("/templates", json=body, headers={"idempotency-key": "tpl-1"})
    assert first.status_code == 201, first.text
    assert again.json()["id"] == first.json()["id"]

    credential = client.post(
        "/registry-auth", json={"name": "hub", "username": "ada", "password": "dckr_pat_example"}
    )
    assert credential.status_code == 201, credential.text
    assert "dckr_pat_example" not in credential.text + client.get("/registry-auth").text

    refreshed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    reused = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401, reused.text

    # host-1's agent registers its GPUs once it is connected (it may start after the api is up).
    wait_for(lambda: availability(client, RTX_4090)[1] == 8, 60, "host-1's GPUs are offered")
    volume = client.post(
        "/volumes", json={"name": "training-data", "size": 10, "dataCenterId": "US-TX-3"}
    )
    assert volume.status_code == 201, volume.text
    created = client.post(
        "/instances",
        json={
            "name": "my-instance",
            "gpuTypeId": RTX_4090,
            "cloudType": "SECURE",
            "templateId": "busybox-smoke",
            "gpuCount": 1,
            "networkVolumeId": volume.json()["id"],
        },
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    running = wait_status(client, instance_id, "RUNNING", timeout=30)
    assert running["hostId"] == "host-1"
    assert client.post(f"/instances/{instance_id}/stop").status_code == 200
    wait_status(client, instance_id, "STOPPED", timeout=30)
    assert client.post(f"/instances/{instance_id}/start").status_code == 200
    wait_status(client, instance_id, "RUNNING", timeout=30)

    key = client.post("/api-keys", json={"name": "scripts"})
    assert key.status_code == 201, key.text
    by_key = httpx.get(
        f"{cluster.url}/me", headers={"authorization": f"Bearer {key.json()['key']}"}, timeout=30
    )
    assert by_key.status_code == 200 and by_key.json()["email"] == email

    # Serverless across containers: the host's agent runs the worker, which reaches the api.
    endpoint = client.post(
        "/endpoints",
        json={"name": "echo", "templateId": TEMPLATE, "gpuIds": GPU, "workersMax": 1},
    )
    assert endpoint.status_code == 201, endpoint.text
    endpoint_id = endpoint.json()["id"]
    ran = client.post(f"/endpoints/{endpoint_id}/runsync", json={"input": {"hello": "cluster"}})
    assert ran.status_code == 200, ran.text
    job = ran.json()
    if job["status"] != "COMPLETED":
        job = wait_for(
            lambda: (
                found
                if (found := client.get(f"/endpoints/{endpoint_id}/status/{job['id']}").json())[
                    "status"
                ]
                == "COMPLETED"
                else None
            ),
            60,
            "the job completed",
        )
    assert job["output"] == {"hello": "cluster"}, job

    before = client.get("/billing/balance").json()["balanceMicros"]
    cluster.credit(email, "10")
    after = client.get("/billing/balance").json()["balanceMicros"]
    assert after - before >= 10_000_000 - 100_000, (before, after)  # less what ran meanwhile

    audit = client.get("/audit", params={"resourceType": "instance", "resourceId": instance_id})
    assert audit.status_code == 200, audit.text
    assert len(audit.json()) >= 3, audit.text  # created, started, stopped, …
    assert client.delete(f"/instances/{instance_id}").status_code in (202, 204)
    wait_gone(client, instance_id, timeout=30)
    assert client.delete(f"/endpoints/{endpoint_id}").status_code in (202, 204)


@dataclass
class JoiningHost:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def join_host(cluster: Cluster, host_id: str) -> JoiningHost:
    """`gpuworker agent` on this machine, outside compose, as an operator starts a new GPU host:
    NATS_URL, its own NATS login and its own host key (`gpuworker host-key`); no database, no
    JWT secret, no master key."""
    log = cluster.tmp / f"agent-{host_id}.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cluster.tmp),
        "NATS_URL": cluster.nats_url,
        "GPUWORKER_NATS_USER": f"agent-{host_id}",
        "GPUWORKER_NATS_PASSWORD": cluster.passwords[f"agent-{host_id}"],
        "GPUWORKER_HOST_KEY": host_key(cluster.secrets["GPUWORKER_SECRET_KEY"], host_id),
        "GPUWORKER_HOST_ID": host_id,
        "GPUWORKER_AGENT_API_URL": cluster.url,
        "GPUWORKER_WORKER_RELAY_PORT": str(free_port()),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            agent_command("simulated", f"{JOINING_GPU}:2"),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return JoiningHost(process, log)


async def refused_for(cluster: Cluster, host_id: str, subject: str) -> list[str]:
    """What the cluster says when `host_id`'s agent publishes on `subject` (empty: allowed)."""
    errors: list[str] = []
    user = f"agent-{host_id}"

    async def note(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        servers=[f"nats://127.0.0.1:{port}" for port in cluster.nats_ports.values()],
        user=user,
        password=cluster.passwords[user],
        inbox_prefix=f"_INBOX.{user}",
        allow_reconnect=False,
        error_cb=note,
    )
    try:
        await nc.publish(subject, b"{}")
        await nc.flush(5)
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    return errors


def test_a_gpu_host_joins_over_the_network(cluster: Cluster) -> None:
    _, client, _ = account(cluster)
    assert availability(client, JOINING_GPU) == (0, 0)
    joined_at = time.monotonic()
    host = join_host(cluster, "host-2")
    try:
        wait_for(
            lambda: availability(client, JOINING_GPU) == (2, 2) or host.process.poll() is not None,
            60,
            "host-2's GPUs are offered",
        )
        assert host.process.poll() is None, host.output()
        registered_s = time.monotonic() - joined_at
        created = client.post(
            "/instances",
            json={"name": "on-host-2", "gpuTypeId": JOINING_GPU, "templateId": "busybox-smoke"},
        )
        assert created.status_code == 201, created.text
        running = wait_status(client, created.json()["id"], "RUNNING", timeout=30)
        assert running["hostId"] == "host-2"
        assert availability(client, JOINING_GPU) == (1, 2)

        # host-2's login speaks for host-2 only: host-1's report subject and the commands to the
        # deciders are refused, its own report subject is not (so the check can tell them apart).
        own = asyncio.run(refused_for(cluster, "host-2", "cmd.agent.host-2.instance"))
        forged = asyncio.run(refused_for(cluster, "host-2", "cmd.agent.host-1.instance"))
        command = asyncio.run(refused_for(cluster, "host-2", "cmd.instance"))
        assert own == [], own
        assert any("permissions violation" in e.lower() for e in forged), forged
        assert any("permissions violation" in e.lower() for e in command), command
        # It reads its own work only: neither the event stream nor host-1's work.
        for subject in (
            "$JS.API.STREAM.INFO.EVENTS",
            "$JS.API.DIRECT.GET.EVENTS",
            "$JS.API.CONSUMER.CREATE.WORK.work_host-1.work.host-1.*.*",
        ):
            peek = asyncio.run(refused_for(cluster, "host-2", subject))
            assert any("permissions violation" in e.lower() for e in peek), (subject, peek)
        print(
            f"\ncluster: host-2 joined over NATS alone; GPUs offered {registered_s:.1f} s after"
            " its agent started; its instance ran on it"
        )
        assert client.delete(f"/instances/{running['id']}").status_code in (202, 204)
        wait_gone(client, running["id"], timeout=30)
    finally:
        host.process.terminate()
        try:
            host.process.wait(20)
        except subprocess.TimeoutExpired:
            host.process.kill()


# What an operator watches (issue 14): each name must be in Prometheus after a small workload.
OPERATOR_METRICS = {
    # the api, from the read models
    "gpuworker_gpus": "GPUs by data center, type and state (allocated, free, unavailable)",
    "gpuworker_hosts": "hosts by data center and availability",
    "gpuworker_instances": "instances by status",
    "gpuworker_projection_lag_events": "projection lag, per projection",
    "gpuworker_job_queue_depth": "job queue depth, per endpoint",
    "gpuworker_job_oldest_queued_seconds": "oldest queued job's age, per endpoint",
    "gpuworker_ledger_accrual_lag_seconds": "ledger accrual lag",
    # the deciders
    "gpuworker_placement_seconds_bucket": "placement latency",
    "gpuworker_event_append_seconds_bucket": "event store append latency",
    "gpuworker_decider_conflicts_total": "decider conflicts",
    "gpuworker_decider_retried_commands_total": "decider retries",
    "gpuworker_decider_commands_total": "commands by outcome",
    "gpuworker_agent_heartbeat_age_seconds": "agent heartbeat age, per host",
    # the projector and audit
    "gpuworker_projector_pending_events": "each projection reader's pending events",
    # the ledger
    "gpuworker_ledger_last_accrual_timestamp_seconds": "the ledger's last accrual",
    "gpuworker_ledger_budget_stops_total": "budget stops the ledger asked for",
    # the agent
    "gpuworker_agent_heartbeats_total": "heartbeats sent",
}
SCRAPED = ("api", "deciders", "projector", "ledger", "audit", "agent")


def prometheus(cluster: Cluster, path: str, **params: str) -> Any:
    answer = httpx.get(f"{cluster.prometheus_url}{path}", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_every_role_and_the_dashboard_reads_what_exists(
    cluster: Cluster,
) -> None:
    _, client, _ = account(cluster)
    # A job nobody can take (no workers allowed) keeps a queue to show.
    endpoint = client.post(
        "/endpoints",
        json={"name": "queued", "templateId": TEMPLATE, "gpuIds": GPU, "workersMax": 0},
    )
    assert endpoint.status_code == 201, endpoint.text
    queued = client.post(f"/endpoints/{endpoint.json()['id']}/run", json={"input": {}})
    assert queued.status_code == 200, queued.text

    def every_role_up() -> bool:
        targets = prometheus(cluster, "/api/v1/targets")["activeTargets"]
        healthy = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return set(SCRAPED) <= healthy

    wait_for(every_role_up, 90, f"Prometheus scrapes {SCRAPED}")

    def missing() -> set[str]:
        names = set(prometheus(cluster, "/api/v1/label/__name__/values"))
        return set(OPERATOR_METRICS) - names

    try:
        wait_for(lambda: not missing(), 60, "every operator metric is in Prometheus")
    except AssertionError:
        raise AssertionError(f"not in Prometheus: {sorted(missing())}") from None
    gpus = prometheus(cluster, "/api/v1/query", query='sum(gpuworker_gpus{gpu_type=~".*4090"})')
    assert gpus["result"] and float(gpus["result"][0]["value"][1]) >= 8, gpus
    depth = prometheus(cluster, "/api/v1/query", query="sum(gpuworker_job_queue_depth)")
    assert depth["result"] and float(depth["result"][0]["value"][1]) >= 1, depth

    # The dashboard queries only metrics that exist: renaming one fails here, not in Grafana.
    dashboard = json.loads((ROOT / "deploy/grafana/gpuworker.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= len(OPERATOR_METRICS) // 2, exprs
    known = set(prometheus(cluster, "/api/v1/label/__name__/values"))
    used = {name for expr in exprs for name in re.findall(r"\bgpuworker_[a-z_]+", expr)}
    assert used and used <= known, sorted(used - known)
    for expr in exprs:
        prometheus(cluster, "/api/v1/query", query=expr.replace("$__rate_interval", "1m"))
    assert client.delete(f"/endpoints/{endpoint.json()['id']}").status_code in (202, 204)
    print(
        f"\ncluster: Prometheus scrapes {len(SCRAPED)} roles; {len(OPERATOR_METRICS)} operator"
        f" metrics present; the dashboard's {len(exprs)} queries all evaluate"
    )


@dataclass
class WriteLoad:
    """Writers creating templates with read-your-writes; each attempt's time and answer kept.
    A writer moves to a new account when its account holds the most templates it may."""

    url: str
    writers: int = 8
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (monotonic time of the answer, status or 0 for none, seconds it took)
    answers: list[tuple[float, int, float]] = field(default_factory=list)
    acknowledged: dict[str, str] = field(default_factory=dict)  # name -> id
    tokens: list[str] = field(default_factory=list)  # every account the writers used
    unexpected: list[str] = field(default_factory=list)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._write) for _ in range(self.writers)]
        for thread in threads:
            thread.start()
        return threads

    def _sign_up(self, client: httpx.Client) -> None:
        """A new account for `client`, signed up as a careful client does (a sign-up may meet
        the outage too: retried after a 503 or no answer, logged in if an attempt had made it)."""
        record = Record()
        signer = CarefulClient(self.url, record, seed=0)
        try:
            signer.sign_up()
        finally:
            signer.http.close()
        client.headers["authorization"] = f"Bearer {signer.token}"
        with self.lock:
            self.tokens.extend(record.tokens)

    def _write(self) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            self._sign_up(client)
            while not self.stop.is_set():
                body = template_body()
                key = uuid.uuid4().hex
                # A careful client: the same key until a definite answer.
                while not self.stop.is_set():
                    sent = time.monotonic()
                    try:
                        response = client.post(
                            "/templates", json=body, headers={"idempotency-key": key}
                        )
                        status = response.status_code
                    except httpx.HTTPError:
                        status = 0
                    answered = time.monotonic()
                    with self.lock:
                        self.answers.append((answered, status, answered - sent))
                    if status == 201:
                        with self.lock:
                            self.acknowledged[body["name"]] = response.json()["id"]
                        break
                    if status == 409 and "quota" in response.text:
                        self._sign_up(client)
                        break
                    if status not in (0, 503):
                        with self.lock:
                            self.unexpected.append(f"{status}: {response.text[:300]}")
                        break
                    time.sleep(0.2)


def stored_templates(client: httpx.Client) -> Counter[str]:
    names: Counter[str] = Counter()
    next_url: str | None = "/templates?limit=500"
    while next_url:
        page = client.get(next_url)
        assert page.status_code == 200, page.text
        names.update(t["name"] for t in page.json() if not t["isPublic"])
        next_url = page.links.get("next", {}).get("url")
    return names


@dataclass
class Outage:
    node: str
    how: str
    down_s: float
    resumed_s: float  # from the stop to the first write acknowledged without the node
    failed_at: list[float]  # when 503s (or no answers) came, in s after the stop
    caught_up_s: float  # from its start again to every replica current


def take_down_the_stream_leader(
    cluster: Cluster, load: WriteLoad, how: str, down_s: float
) -> Outage:
    """Stops the node leading the event stream (`killed`: SIGKILL; `stopped`: SIGTERM, the way
    an operator stops it), keeps it down `down_s`, starts it again and waits until it caught up."""
    info = asyncio.run(cluster.stream_info()).cluster
    assert info is not None and info.leader, "the stream has no leader"
    node = info.leader
    container = cluster.containers(node)
    assert len(container) == 1, container
    stopped_at = time.monotonic()
    command = (
        ["docker", "kill", container[0]]
        if how == "killed"
        else ["docker", "stop", "-t", "10", container[0]]
    )
    subprocess.run(command, check=True, capture_output=True)
    time.sleep(max(0.0, down_s - (time.monotonic() - stopped_at)))
    restarted_at = time.monotonic()
    cluster.compose("start", node)

    def caught_up() -> bool:
        try:
            found = asyncio.run(cluster.stream_info())
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        replicas = (found.cluster.replicas if found.cluster else None) or []
        return len(replicas) == 2 and all(r.current and not r.lag for r in replicas)

    wait_for(caught_up, 120, f"{node} caught up with the stream")
    caught_up_s = time.monotonic() - restarted_at
    with load.lock:
        answers = list(load.answers)
    resumed = min(
        (t for t, status, _ in answers if status == 201 and t > stopped_at + 0.5), default=None
    )
    assert resumed is not None and resumed < restarted_at, (
        f"no write was acknowledged while {node} was down"
    )
    return Outage(
        node=node,
        how=how,
        down_s=restarted_at - stopped_at,
        resumed_s=resumed - stopped_at,
        failed_at=sorted(
            {
                round(t - stopped_at, 1)
                for t, status, _ in answers
                if status != 201 and t > stopped_at
            }
        ),
        caught_up_s=caught_up_s,
    )


def test_writes_go_on_while_the_stream_leader_node_is_down(cluster: Cluster) -> None:
    load = WriteLoad(cluster.url)
    threads = load.start()
    outages = []
    try:
        time.sleep(5)
        outages.append(take_down_the_stream_leader(cluster, load, "killed", down_s=15))
        time.sleep(5)
        outages.append(take_down_the_stream_leader(cluster, load, "stopped", down_s=8))
        time.sleep(3)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(60)
    names: Counter[str] = Counter()
    for token in load.tokens:
        with httpx.Client(
            base_url=cluster.url, timeout=30, headers={"authorization": f"Bearer {token}"}
        ) as client:
            names.update(stored_templates(client))
    lost = [name for name in load.acknowledged if names[name] == 0]
    doubled = [name for name, n in names.items() if n > 1]
    statuses = Counter(status for _, status, _ in load.answers)
    slowest = max(took for _, _, took in load.answers)
    print(
        f"\ncluster: {load.writers} writers (POST /templates, read-your-writes): acknowledged"
        f" {len(load.acknowledged)}, lost {len(lost)}, doubled {len(doubled)}; answers"
        f" {dict(statuses)} (0: no answer); slowest answer {slowest:.1f} s"
    )
    for outage in outages:
        print(
            f"cluster: NATS node {outage.node}, the stream leader, {outage.how} (down"
            f" {outage.down_s:.0f} s): writes acknowledged again {outage.resumed_s:.1f} s after,"
            f" without it; 503s at {outage.failed_at} s; caught up {outage.caught_up_s:.1f} s"
            " after it started again"
        )
    assert not load.unexpected, load.unexpected[:10]
    assert not lost, lost[:10]
    assert not doubled, doubled[:10]
    # A dead dependency answers 503 within the request timeout, never a hang.
    assert slowest < 10, slowest
    # Writes go on without the node: the next leader is elected within NATS's election timeout
    # (4 to 9 s after a crash), not when the node comes back.
    assert all(o.resumed_s < 12 for o in outages), outages


def nats_connections(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """Every node's client connections named `name`, from its monitoring port (inside the node's
    container: the port is not published)."""
    found: list[dict[str, Any]] = []
    script = (
        "import json, urllib.request;"
        "print(json.dumps(json.load(urllib.request.urlopen("
        "'http://127.0.0.1:8222/connz?limit=1024&subs=1', timeout=5))['connections']))"
    )
    for node in ("n1", "n2", "n3"):
        found += [
            c
            for c in json.loads(cluster.run_in(node, "python3", "-c", script))
            if c.get("name") == name
        ]
    return found


def test_two_replicas_share_the_work_and_one_can_die(cluster: Cluster) -> None:
    cluster.compose(
        "up",
        "-d",
        "--no-build",
        "--no-recreate",
        "--scale",
        "deciders=2",
        "--scale",
        "projector=2",
    )
    wait_for(lambda: len(cluster.containers("deciders")) == 2, 60, "two deciders")
    wait_for(lambda: len(cluster.containers("projector")) == 2, 60, "two projectors")
    cluster.wait_healthy(60)
    # A container that runs is not yet a replica that takes commands: wait until both deciders
    # have joined the commands' queue group on NATS.
    wait_for(
        lambda: (
            [
                f"{COMMANDS_ROOT}.>" in c.get("subscriptions_list", [])
                for c in nats_connections(cluster, "deciders")
            ]
            == [True, True]
        ),
        60,
        "both decider replicas in the commands' queue group",
    )
    with careful_load(cluster.url, 4) as record:
        time.sleep(8)
        delivered = {c["cid"]: c["out_msgs"] for c in nats_connections(cluster, "deciders")}
        victims = [cluster.containers("deciders")[0], cluster.containers("projector")[-1]]
        for victim in victims:
            cluster.crash(victim)
        time.sleep(12)
    seen = check_acknowledged(cluster.url, record, RTX_4090)
    working = sorted(n for n in delivered.values() if n > 0)
    print(
        f"\ncluster: two deciders and two projectors under 4 careful clients, one of each killed:"
        f" acknowledged {len(record.created)} of {record.writes} writes, lost 0, doubled 0,"
        f" GPU leaks 0 ({seen} resources); messages delivered to each decider replica before"
        f" the kill {working}; statuses {dict(record.statuses)}"
    )
    record.assert_clean()
    assert len(working) >= 2, f"the replicas did not share the commands: {delivered}"
    assert len(record.created) > 10
    # Exits non-zero (and fails the test) on any broken ledger invariant.
    verified = cluster.run_in("ledger", "gpuworker", "ledger", "verify")
    print(f"cluster: ledger verify: {verified.strip().splitlines()[-1]}")


def test_every_role_recovers_after_postgres_restarts(cluster: Cluster) -> None:
    _, client, _ = account(cluster)
    roles = ("api", "deciders", "projector", "ledger", "audit")
    started = {role: cluster.containers(role) for role in roles}
    restarted_at = time.monotonic()
    cluster.compose("restart", "-t", "5", "postgres")

    def works() -> bool:
        try:
            created = client.post("/templates", json=template_body(), timeout=10)
        except httpx.HTTPError:
            return False
        return created.status_code == 201

    wait_for(works, 120, "a write with read-your-writes after PostgreSQL restarted")
    recovered_s = time.monotonic() - restarted_at
    health_s = cluster.wait_healthy(60) + recovered_s
    # Every role recovered in place (or was restarted by compose) and does its work again.
    for role in roles:
        assert cluster.containers(role), f"{role} is not running"
    # The ledger is back: a new account gets its sign-up credit, and may rent a GPU with it.
    _, fresh, _ = account(cluster)
    wait_for(
        lambda: fresh.get("/billing/balance").json()["balanceMicros"] > 0,
        60,
        "the ledger credited a new account after PostgreSQL restarted",
    )
    ledger_s = time.monotonic() - restarted_at
    instance = fresh.post(
        "/instances", json={"name": "after-pg", "gpuTypeId": RTX_4090, "templateId": TEMPLATE}
    )
    assert instance.status_code == 201, instance.text
    wait_status(fresh, instance.json()["id"], "RUNNING", timeout=30)
    audit = wait_for(
        lambda: (
            entries
            if (entries := fresh.get("/audit").json())
            and any(e.get("resourceId") == instance.json()["id"] for e in entries)
            else None
        ),
        30,
        "the audit log has the new instance",
    )
    assert audit
    print(
        f"\ncluster: PostgreSQL restarted; writes with read-your-writes work again after"
        f" {recovered_s:.1f} s, /health ok after {health_s:.1f} s, the ledger credits a new"
        f" account after {ledger_s:.1f} s; roles running"
        f" {sorted(r for r in roles if cluster.containers(r))} (containers before: "
        f"{sum(len(c) for c in started.values())})"
    )
    assert get_instance(fresh, instance.json()["id"])["status"] == "RUNNING"
