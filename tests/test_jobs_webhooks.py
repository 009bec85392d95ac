"""Webhooks: a job's final status is POSTed to the URL given with it, and tried again twice
(GPUWORKER_WEBHOOK_RETRY_DELAY apart; half a second on the serverless stack) when the receiver
does not answer 2xx; then given up. The receiver is a small HTTP server on 127.0.0.1 (the stack
allows that host); the URL policy itself is checked as a pure function."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from services.webhook_policy import WebhookRefused, check_resolved, check_url
from tests.api_helpers import wait_for
from tests.serverless_helpers import account, create_endpoint, run, worker_client, worker_path
from tests.servers import Stack

pytestmark = pytest.mark.timeout(120)


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        # What it answers, attempt by attempt (the last one from then on).
        self.statuses = statuses
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.url = ""


@contextmanager
def receiver(statuses: list[int]) -> Iterator[Receiver]:
    state = Receiver(statuses)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            state.received.append((time.monotonic(), json.loads(self.rfile.read(length))))
            code = state.statuses[min(len(state.received), len(state.statuses)) - 1]
            self.send_response(code)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def finish(stack: Stack, endpoint: dict[str, Any], job_id: str, body: bytes) -> None:
    with worker_client(stack, endpoint, "w1") as worker:
        taken = worker.get(worker_path(endpoint, "job-take", "w1"))
        assert taken.status_code == 200 and taken.json()["id"] == job_id
        path = worker_path(endpoint, "job-done", "w1", job_id) + "&isStream=false"
        assert worker.post(path, content=body).status_code == 200


def test_the_final_status_is_posted_and_retried_until_taken(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    with receiver([500, 200]) as hook:
        job_id = run(client, endpoint["id"], {"p": 1}, webhook=hook.url)
        finish(serverless_stack, endpoint, job_id, b'{"output": {"answer": 42}}')
        wait_for(lambda: len(hook.received) >= 2, 30, "the webhook's second attempt")
        time.sleep(1.5)  # nothing after the one it took
    assert len(hook.received) == 2
    (first_at, first), (second_at, second) = hook.received
    assert first == second
    assert second["id"] == job_id and second["status"] == "COMPLETED"
    assert second["output"] == {"answer": 42}
    assert second_at - first_at >= 0.4


def test_three_attempts_then_given_up(serverless_stack: Stack) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    with receiver([503]) as hook:
        job_id = run(client, endpoint["id"], 1, webhook=hook.url)
        assert client.post(f"/endpoints/{endpoint['id']}/cancel/{job_id}").status_code == 200
        wait_for(lambda: len(hook.received) >= 3, 30, "three attempts")
        time.sleep(2.0)
    assert len(hook.received) == 3
    assert all(body["status"] == "CANCELLED" for _at, body in hook.received)


def test_webhook_urls() -> None:
    # Pure: nothing is contacted. Private and local addresses are refused unless allowed.
    private = "http://" + ".".join(("192", "168", "1", "20")) + ":8080/x"
    for refused in (
        "http://localhost/x",
        "http://127.0.0.1/x",
        "http://[::1]/x",
        "http://app.localhost/x",
        private,
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
        "http://example.com:99999/x",
        "http://" + "a" * 2048 + ".com/",
    ):
        with pytest.raises(WebhookRefused):
            check_url(refused)
    assert check_url("https://example.com/hook").hostname == "example.com"
    assert check_url("http://127.0.0.1:8080/x", ["127.0.0.1"]).port == 8080
    assert check_url("http://127.0.0.1:8080/x", ["127.0.0.1:8080"]).port == 8080
    with pytest.raises(WebhookRefused):
        check_url("http://127.0.0.1:8081/x", ["127.0.0.1:8080"])
    # A public name that resolves to a private address is refused when it is sent.
    parts = check_url("https://hooks.example.com/x")
    public = str(ipaddress.IPv4Address(0x5DB8D822))  # built, never contacted
    with pytest.raises(WebhookRefused, match="resolves to"):
        check_resolved(parts, [public, "::1"], [])
    check_resolved(parts, [public], [])
