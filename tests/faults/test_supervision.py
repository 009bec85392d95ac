"""`gpuworker up` survives the death of any of its processes: a role, nats-server, PostgreSQL.

Everything is real and embedded, as a new user runs it (README's first line); each process is
SIGKILLed, and the product must come back by itself, without taking the others down, and say so
on /health."""

from __future__ import annotations

import os
import signal
import time
import uuid

import httpx

from tests.api_helpers import template_body
from tests.faults.stack import Up


def eventually(check: object, timeout_s: float = 60.0, what: str = "") -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except (httpx.HTTPError, OSError, KeyError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def signup_and_write(url: str) -> None:
    """A user signs up and creates a template; both must work end to end."""
    with httpx.Client(base_url=url, timeout=15) as client:
        email = f"sup-{uuid.uuid4().hex}@example.com"
        r = client.post(
            "/auth/signup", json={"name": "S", "email": email, "password": "correct horse"}
        )
        assert r.status_code == 201, r.text
        token = r.json()["access_token"]
        r = client.post(
            "/templates", json=template_body(), headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 201, r.text
        got = client.get(
            f"/templates/{r.json()['id']}", headers={"authorization": f"Bearer {token}"}
        )
        assert got.status_code == 200, got.text


def works(url: str) -> bool:
    try:
        signup_and_write(url)
    except AssertionError:
        return False
    return True


def test_a_killed_role_is_restarted_and_nothing_else_stops(up: Up) -> None:
    signup_and_write(up.url)
    others = {role: up.role_pid(role) for role in ("api", "deciders", "agent")}
    victim = up.role_pid("projector")
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: up.role_pid("projector") not in (None, victim), 30, "the projector to come back"
    )
    assert {role: up.role_pid(role) for role in others} == others, "the other roles kept running"
    assert up.process.poll() is None, "up itself is still running"
    assert "projector killed by SIGKILL; restarting it" in up.logs()
    eventually(lambda: works(up.url), 60, "writes with read-your-writes to work again")
    processes = up.health()["processes"]
    assert isinstance(processes, dict)
    assert processes["projector"]["restarts"] == 1
    assert processes["projector"]["lastExit"] == "killed by SIGKILL"


def test_killed_servers_are_restarted_and_roles_reconnect(up: Up) -> None:
    roles = {role: up.role_pid(role) for role in ("api", "deciders", "projector", "agent")}
    for server in ("nats-server", "postgres"):
        victim = up.server_pid(server)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda server=server, victim=victim: up.server_pid(server) not in (None, victim),
            60,
            f"{server} to come back",
        )
        eventually(lambda: works(up.url), 90, f"writes to work again after {server} died")
    assert {role: up.role_pid(role) for role in roles} == roles, "no role had to restart"
    logs = up.logs()
    assert "nats-server killed by SIGKILL; restarting it" in logs
    assert "postgres is gone" in logs


def test_a_crash_looping_role_is_reported_on_health(up: Up) -> None:
    for _ in range(3):
        victim = up.role_pid("agent")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda victim=victim: up.role_pid("agent") not in (None, victim),
            60,
            "a new agent",
        )

    def looping() -> bool:
        health = up.health()
        processes = health["processes"]
        assert isinstance(processes, dict)
        return health["status"] == "degraded" and processes["agent"]["state"] == "crash-looping"

    eventually(looping, 30, "health to say the agent is crash-looping")
    assert "crash-looping" in up.logs()
