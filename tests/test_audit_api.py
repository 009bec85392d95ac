"""GET /audit on the running stack (`gpuworker up`, audit role included): a customer's own trail of
signup, credentials, templates and instances, with the client's address, newest first, paged and
filtered; another customer sees none of it; bad parameters are 400s naming the parameter; and no
secret the customer sent reaches any audit row."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.api_helpers import assert_error, signup, template_body, wait_for
from tests.instance_helpers import BUSYBOX_TEMPLATE, create_instance, wait_status
from tests.servers import Stack

LINK = re.compile(r'^<(/audit\?[^>]+)>; rel="next"$')


class Trail:
    """One customer's activity on the shared stack, made once for the module's tests."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.registry_password = f"dckr_pat_{uuid.uuid4().hex}"
        self.env_value = f"hf_{uuid.uuid4().hex}"
        self.token, _, _ = signup(stack)
        with stack.client(self.token) as client:
            self.user_id = client.get("/me").json()["id"]
            auth = client.post(
                "/registry-auth",
                json={"name": "hub", "username": "ada", "password": self.registry_password},
            )
            assert auth.status_code == 201, auth.text
            self.auth_id = auth.json()["id"]
            self.request_id = f"req-{uuid.uuid4().hex}"
            template = client.post(
                "/templates",
                json=template_body(env={"HF_TOKEN": self.env_value}),
                # The stack believes no proxy: a client's own claim of an address is ignored.
                headers={"x-request-id": self.request_id, "x-forwarded-for": "127.0.0.77"},
            )
            assert template.status_code == 201, template.text
            self.template_id = template.json()["id"]
            self.instance_id = create_instance(
                client, templateId=BUSYBOX_TEMPLATE, env={"HF_TOKEN": self.env_value}
            )["id"]
            wait_status(client, self.instance_id, "RUNNING", timeout=30)
            stopped = client.post(f"/instances/{self.instance_id}/stop")
            assert stopped.status_code == 200, stopped.text
            wait_status(client, self.instance_id, "STOPPED", timeout=30)

    def get(self, path: str = "/audit", **params: Any) -> httpx.Response:
        with self.stack.client(self.token) as client:
            # No `params` at all for a Link's URL: httpx would replace its query with them.
            return client.get(path, params=params or None)

    def records(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body

    def everything(self) -> list[dict[str, Any]]:
        """Once the audit role has logged the instance's stop (the last of the activity)."""

        def complete() -> list[dict[str, Any]] | None:
            found = self.records(limit=500)
            return found if any(r["action"] == "InstanceStopped" for r in found) else None

        records: list[dict[str, Any]] = wait_for(complete, 30, "the trail to be logged")
        return records


@pytest.fixture(scope="module")
def trail(stack: Stack) -> Trail:
    return Trail(stack)


def test_the_trail_shows_the_customers_actions_with_their_address(trail: Trail) -> None:
    records = trail.everything()
    assert all(
        set(r)
        == {
            "id",
            "time",
            "actor",
            "action",
            "resourceType",
            "resourceId",
            "correlationId",
            "sourceAddress",
        }
        for r in records
    ), records[0]
    mine = {(r["action"], r["resourceType"], r["resourceId"]) for r in records}
    for expected in (
        ("UserSignedUp", "user", trail.user_id),
        ("RegistryAuthCreated", "registry_auth", trail.auth_id),
        ("TemplateCreated", "template", trail.template_id),
        ("InstanceCreated", "instance", trail.instance_id),
        ("InstanceStopRequested", "instance", trail.instance_id),
    ):
        assert expected in mine, (expected, sorted(mine))
    own = [r for r in records if r["actor"] == trail.user_id]
    assert {"EmailClaimed", "UserSignedUp", "TemplateCreated", "InstanceCreated"} <= {
        r["action"] for r in own
    }
    # Asked for through the api, from this test's loopback address.
    assert {r["sourceAddress"] for r in own} == {"127.0.0.1"}
    template = next(r for r in records if r["action"] == "TemplateCreated")
    assert template["correlationId"] == trail.request_id
    # What the host's agent saw about the customer's instance is in their trail, without one.
    reports = [r for r in records if r["action"] in ("InstanceRunning", "InstanceStopped")]
    assert {r["resourceId"] for r in reports} == {trail.instance_id}
    assert all(r["actor"].startswith("system:agent:") for r in reports)
    assert all(r["sourceAddress"] is None for r in reports)
    # Newest first.
    times = [datetime.fromisoformat(r["time"]) for r in records]
    assert times == sorted(times, reverse=True)
    assert records[0]["action"] == "InstanceStopped"
    assert len({r["id"] for r in records}) == len(records)


def test_the_trail_pages_with_link_headers(trail: Trail) -> None:
    everything = trail.everything()
    assert len(everything) > 6
    seen: list[dict[str, Any]] = []
    response = trail.get(limit=3)
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        assert 1 <= len(page) <= 3
        seen += page
        pages += 1
        link = response.headers.get("link")
        if link is None:
            break
        match = LINK.match(link)
        assert match, link
        assert "limit=3" in match[1]
        response = trail.get(match[1])
    assert pages == -(-len(everything) // 3)
    assert [r["id"] for r in seen] == [r["id"] for r in everything]


def test_the_trail_filters_by_resource_and_time(trail: Trail) -> None:
    everything = trail.everything()
    instance = trail.records(resourceType="instance", resourceId=trail.instance_id)
    expected = [r for r in everything if r["resourceId"] == trail.instance_id]
    assert [r["id"] for r in instance] == [r["id"] for r in expected]
    assert {r["action"] for r in instance} >= {"InstanceCreated", "InstanceRunning"}
    templates = trail.records(resourceType="template")
    assert {r["resourceId"] for r in templates} == {trail.template_id}
    assert trail.records(resourceType="volume") == []
    # A time window: [start, end) of the template's creation only.
    created = next(r for r in everything if r["action"] == "TemplateCreated")
    at = datetime.fromisoformat(created["time"])
    window = trail.records(
        startTime=at.isoformat(), endTime=(at + timedelta(microseconds=1)).isoformat()
    )
    assert created["id"] in {r["id"] for r in window}
    assert all(datetime.fromisoformat(r["time"]) == at for r in window)
    # endTime is exclusive, and a window after everything is empty.
    assert created["id"] not in {r["id"] for r in trail.records(endTime=at.isoformat())}
    later = datetime.now(UTC) + timedelta(hours=1)
    assert trail.records(startTime=later.isoformat()) == []
    # Filters hold across pages.
    paged = trail.get(resourceType="instance", limit=1)
    assert paged.status_code == 200 and len(paged.json()) == 1
    match = LINK.match(paged.headers["link"])
    assert match and "resourceType=instance" in match[1]
    assert trail.get(match[1]).json()[0]["resourceType"] == "instance"


def test_another_customer_sees_none_of_it(trail: Trail, stack: Stack) -> None:
    everything = trail.everything()
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        other_id = client.get("/me").json()["id"]

        def own_signup() -> list[dict[str, Any]] | None:
            body: list[dict[str, Any]] = client.get("/audit", params={"limit": 500}).json()
            return body if any(r["action"] == "UserSignedUp" for r in body) else None

        theirs: list[dict[str, Any]] = wait_for(own_signup, 30, "the other customer's signup")
        assert {r["id"] for r in theirs}.isdisjoint({r["id"] for r in everything})
        assert all(trail.user_id not in str(r) for r in theirs)
        assert {r["resourceId"] for r in theirs if r["resourceType"] == "user"} == {other_id}
        for resource_type, resource_id in (
            ("instance", trail.instance_id),
            ("template", trail.template_id),
            ("registry_auth", trail.auth_id),
            ("user", trail.user_id),
        ):
            response = client.get(
                "/audit", params={"resourceType": resource_type, "resourceId": resource_id}
            )
            assert response.status_code == 200 and response.json() == [], response.text
    with stack.client() as anonymous:
        assert_error(anonymous.get("/audit"), 401)


def test_bad_parameters_are_400s_naming_them(trail: Trail) -> None:
    for params, name in (
        ({"resourceType": "spaceship"}, "resourceType"),
        ({"resourceId": "../etc"}, "resourceId"),
        ({"startTime": "yesterday"}, "startTime"),
        ({"endTime": "2026-13-45T00:00:00Z"}, "endTime"),
        ({"startTime": "2026-11-30T10:00:00Z", "endTime": "2026-11-30T09:00:00Z"}, "endTime"),
        ({"startTime": "2026-11-30T10:00:00Z", "endTime": "2026-11-30T10:00:00Z"}, "endTime"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ):
        assert_error(trail.get(**params), 400, f"`{name}`")


def test_no_secret_reaches_the_audit_log(trail: Trail, stack: Stack) -> None:
    trail.everything()
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT row_to_json(a)::text FROM audit_log a").fetchall()
        ciphertext = conn.execute(
            "SELECT doc->>'password_ciphertext' FROM registry_auths WHERE id = %s",
            (trail.auth_id,),
        ).fetchone()
    dump = "\n".join(r[0] for r in rows)
    assert trail.instance_id in dump and trail.auth_id in dump
    assert trail.registry_password not in dump
    assert trail.env_value not in dump
    assert ciphertext is not None and ciphertext[0] and ciphertext[0] not in dump
    served = trail.get(limit=500).text
    assert trail.registry_password not in served and trail.env_value not in served
