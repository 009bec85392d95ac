"""Idempotency-Key end to end, under the faults that used to break it: a 503 "may or may not have
been applied" must not lead to a second resource, and a key whose request died with its api
process must not stay "in progress": the retry takes it over and completes it."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx

from tests.api_helpers import template_body
from tests.faults.stack import Up


def token(up: Up) -> str:
    with httpx.Client(base_url=up.url, timeout=30) as client:
        r = client.post(
            "/auth/signup",
            json={
                "name": "I",
                "email": f"idem-{uuid.uuid4().hex}@example.com",
                "password": "correct horse",
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["access_token"])


def templates_named(up: Up, auth: dict[str, str], name: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=up.url, timeout=30, headers=auth) as client:
        r = client.get("/templates", params={"limit": 500})
        assert r.status_code == 200, r.text
        return [t for t in r.json() if t["name"] == name]


def test_a_retry_after_deciders_timed_out_creates_one_resource(up: Up) -> None:
    auth = {"authorization": f"Bearer {token(up)}"}
    body = template_body()
    key = {"idempotency-key": uuid.uuid4().hex}
    deciders = up.role_pid("deciders")
    assert deciders is not None
    os.kill(deciders, signal.SIGSTOP)
    try:
        with httpx.Client(base_url=up.url, timeout=30, headers=auth | key) as client:
            first = client.post("/templates", json=body)
        assert first.status_code == 503, first.text
        assert "may or may not have been applied" in first.text
    finally:
        os.kill(deciders, signal.SIGCONT)
    # The frozen deciders now see a command past its deadline: they must not apply it late.
    time.sleep(1.0)
    with httpx.Client(base_url=up.url, timeout=30, headers=auth | key) as client:
        second = client.post("/templates", json=body)
        third = client.post("/templates", json=body)
    assert second.status_code == 201, second.text
    assert third.status_code == 201 and third.json() == second.json(), "replayed"
    assert [t["id"] for t in templates_named(up, auth, body["name"])] == [second.json()["id"]]


def test_a_key_whose_request_died_with_the_api_is_taken_over(up: Up) -> None:
    auth = {"authorization": f"Bearer {token(up)}"}
    body = template_body()
    key = {"idempotency-key": uuid.uuid4().hex}
    deciders, api = up.role_pid("deciders"), up.role_pid("api")
    assert deciders is not None and api is not None
    os.kill(deciders, signal.SIGSTOP)
    outcome: dict[str, object] = {}

    def first_attempt() -> None:
        try:
            with httpx.Client(base_url=up.url, timeout=30, headers=auth | key) as client:
                outcome["first"] = client.post("/templates", json=body).status_code
        except httpx.HTTPError as exc:
            outcome["first"] = type(exc).__name__

    attempt = threading.Thread(target=first_attempt)
    attempt.start()
    time.sleep(1.5)  # the request holds its key and waits on the frozen deciders
    os.kill(api, signal.SIGKILL)
    attempt.join(30)
    os.kill(deciders, signal.SIGCONT)
    assert outcome["first"] in ("RemoteProtocolError", "ReadError", "ConnectError"), outcome

    deadline = time.monotonic() + 60
    statuses = []
    while time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=up.url, timeout=30, headers=auth | key) as client:
                r = client.post("/templates", json=body)
        except httpx.HTTPError:
            time.sleep(0.5)  # the api is restarting
            continue
        statuses.append(r.status_code)
        if r.status_code == 201:
            break
        assert r.status_code in (409, 503), r.text
        if r.status_code == 409:
            assert "in progress" in r.text and int(r.headers["retry-after"]) <= 15, r.text
        time.sleep(1.0)
    assert statuses[-1] == 201, f"the key never came free: {statuses}"
    assert len(templates_named(up, auth, body["name"])) == 1
