"""Careful clients: they sign up and create templates, volumes and instances, stop, start and
delete them, every POST with its own Idempotency-Key retried with the same key after a 503 or a
broken connection, and they record what they were told. The fault suite (`gpuworker up` with
processes killed) and the cluster check (compose with NATS nodes, replicas and PostgreSQL stopped)
load the product with them and check the record against what the API then shows."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.api_helpers import template_body
from tests.instance_helpers import RTX_4090

HANG_S = 10.0
RETRY_FOR_S = 90.0
HOLDING = {"PENDING", "PROVISIONING", "RUNNING", "STOPPING", "RESTARTING"}


@dataclass
class Record:
    """What the clients were told, and everything that went wrong on the way."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # key -> (kind, id, name) of every acknowledged create
    created: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    writes: int = 0

    def note(self, problem: str) -> None:
        with self.lock:
            self.unexpected.append(problem)

    def assert_clean(self) -> None:
        """Nothing but definite answers: no 5xx other than 503, no request hung."""
        assert not self.unexpected, self.unexpected[:20]
        assert not self.hangs, self.hangs[:20]


class CarefulClient:
    def __init__(self, url: str, record: Record, seed: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=HANG_S + 2)
        self.record = record
        self.rng = random.Random(seed)
        self.token = ""
        self.instances: list[str] = []
        self.volumes: list[str] = []

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> httpx.Response | None:
        """Until a definite answer: 503s and broken connections are retried, with the same key."""
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        if key:
            headers["idempotency-key"] = key
        give_up = time.monotonic() + RETRY_FOR_S
        while time.monotonic() < give_up:
            started = time.monotonic()
            try:
                response = self.http.request(method, path, json=body, headers=headers)
            except httpx.TimeoutException:
                self.record.hangs.append(f"{method} {path}: no answer in {HANG_S + 2} s")
                continue
            except httpx.TransportError:
                time.sleep(0.3)  # the api is restarting
                continue
            elapsed = time.monotonic() - started
            with self.record.lock:
                self.record.statuses[response.status_code] += 1
            if elapsed > HANG_S:
                self.record.hangs.append(f"{method} {path}: {elapsed:.1f} s")
            if response.status_code == 503 or (
                response.status_code == 409 and "in progress" in response.text
            ):
                time.sleep(0.3)
                continue
            if response.status_code >= 500:
                self.record.note(f"{method} {path} -> {response.status_code} {response.text}")
                return None
            return response
        self.record.note(f"{method} {path}: no definite answer in {RETRY_FOR_S} s")
        return None

    def sign_up(self) -> None:
        email = f"chaos-{uuid.uuid4().hex}@example.com"
        password = "correct horse battery"
        r = self.call(
            "POST",
            "/auth/signup",
            {"name": "Chaos", "email": email, "password": password},
            key=uuid.uuid4().hex,
        )
        if r is not None and r.status_code == 409:  # created by an attempt whose answer was lost
            r = self.call("POST", "/auth/login", {"email": email, "password": password})
        assert r is not None and r.status_code in (200, 201), r and r.text
        self.token = r.json()["access_token"]
        with self.record.lock:
            self.record.tokens.append(self.token)

    def create(self, kind: str, path: str, body: dict[str, Any]) -> str | None:
        key = uuid.uuid4().hex
        r = self.call("POST", path, body, key=key)
        with self.record.lock:
            self.record.writes += 1
        if r is None:
            return None
        if r.status_code != 201:
            # No capacity, or an account at its quota (long runs reach it), is a fine answer.
            if r.status_code != 409 or (kind != "instance" and "quota" not in r.text):
                self.record.note(f"create {kind} -> {r.status_code} {r.text}")
            return None
        resource = r.json()
        with self.record.lock:
            self.record.created[key] = (kind, resource["id"], resource["name"])
        return str(resource["id"])

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.4:
            self.create("template", "/templates", template_body())
        elif roll < 0.6 and len(self.instances) < 2:
            name = f"inst-{uuid.uuid4().hex[:8]}"
            body: dict[str, Any] = {
                "name": name,
                "gpuTypeId": RTX_4090,
                "templateId": "busybox-smoke",
            }
            if (instance_id := self.create("instance", "/instances", body)) is not None:
                self.instances.append(instance_id)
        elif roll < 0.75:
            body = {"name": f"vol-{uuid.uuid4().hex[:8]}", "size": 10, "dataCenterId": "US-TX-3"}
            if (volume_id := self.create("volume", "/volumes", body)) is not None:
                self.volumes.append(volume_id)
        elif roll < 0.85 and self.instances:
            instance_id = self.rng.choice(self.instances)
            r = self.call("POST", f"/instances/{instance_id}/stop", key=uuid.uuid4().hex)
            if r is not None and r.status_code == 200:
                with self.record.lock:
                    self.record.stopped.add(instance_id)
        elif self.instances or self.volumes:
            kind = "instances" if self.instances and self.rng.random() < 0.5 else "volumes"
            ids = self.instances if kind == "instances" or not self.volumes else self.volumes
            kind = "instances" if ids is self.instances else "volumes"
            resource_id = ids.pop()
            r = self.call("DELETE", f"/{kind}/{resource_id}")
            if r is not None and r.status_code in (202, 204, 404):
                with self.record.lock:
                    self.record.deleted.add(resource_id)
            elif r is not None:
                self.record.note(f"DELETE {kind}/{resource_id} -> {r.status_code} {r.text}")

    def run(self, until: threading.Event) -> None:
        try:
            self.sign_up()
            while not until.is_set():
                self.step()
        except Exception as exc:  # a client that dies silently would hide everything after
            self.record.note(f"client crashed: {exc!r}")
        finally:
            self.http.close()


def all_pages(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = path
    while next_url:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        items.extend(r.json())
        next_url = r.links.get("next", {}).get("url")
    return items


def check_acknowledged(url: str, record: Record, gpu_type: str) -> int:
    """Every acknowledged create is there, no retried key made a second resource, instances nobody
    stopped run again, and the GPUs of `gpu_type` held by live instances are exactly those not
    available (no leak, no double allocation). Returns how many resources were seen."""
    owners = [
        httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {t}"})
        for t in record.tokens
    ]
    try:
        seen: dict[str, dict[str, Any]] = {}
        names: Counter[str] = Counter()
        for client in owners:
            for kind in ("templates", "instances", "volumes"):
                for item in all_pages(client, f"/{kind}"):
                    seen[item["id"]] = item
                    names[item["name"]] += 1
        lost = [
            (kind, rid)
            for kind, rid, _name in record.created.values()
            if rid not in record.deleted and rid not in seen
        ]
        duplicates = [n for _k, _i, n in record.created.values() if names[n] > 1]
        assert not lost, f"{len(lost)} acknowledged creates are missing: {lost[:10]}"
        assert not duplicates, f"retried keys made second resources: {duplicates[:10]}"

        # Settled: instances nobody stopped run again; GPUs held = capacity - available.
        def settled() -> tuple[bool, str]:
            instances = [i for c in owners for i in all_pages(c, "/instances")]
            not_back = [
                (i["id"], i["status"])
                for i in instances
                if i["id"] not in record.stopped
                and i["desiredStatus"] == "RUNNING"
                and i["status"] != "RUNNING"
            ]
            held = sum(
                i["gpuCount"]
                for i in instances
                if i["status"] in HOLDING and i["gpuTypeId"] == gpu_type
            )
            gpu = next(g for g in owners[0].get("/gpu-types").json() if g["id"] == gpu_type)
            total = sum(a["total"] for a in gpu["availability"])
            available = sum(a["available"] for a in gpu["availability"])
            leak = total - available - held
            return (not not_back and leak == 0), f"not back {not_back}, leak {leak}, {gpu}"

        deadline = time.monotonic() + 60
        ok, detail = settled()
        while not ok and time.monotonic() < deadline:
            time.sleep(1)
            ok, detail = settled()
        assert ok, detail
    finally:
        for client in owners:
            client.close()
    return len(seen)


@contextmanager
def careful_load(url: str, clients: int) -> Iterator[Record]:
    """`clients` careful clients (seeds 0, 1, …) at work until the block ends; then they finish
    what they were doing (retries included) and the record is complete."""
    record = Record()
    stop = threading.Event()
    threads = [
        threading.Thread(target=CarefulClient(url, record, seed).run, args=(stop,))
        for seed in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        yield record
    finally:
        stop.set()
        for thread in threads:
            thread.join(RETRY_FOR_S + 30)
