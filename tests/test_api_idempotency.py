"""Idempotency-Key on POST: the same key and body replay the first response and make nothing new;
the same key with another body is 409; keys are per user. (Anonymous /auth/* routes ignore the
key and are never replayed: tests/security/test_idempotency_records.py.)"""

from __future__ import annotations

import uuid

from tests.api_helpers import (
    assert_error,
    own_templates,
    template_body,
    user_client,
)
from tests.servers import Stack


def _key() -> dict[str, str]:
    return {"idempotency-key": f"key-{uuid.uuid4().hex}"}


def test_same_key_same_body_replays_and_creates_once(stack: Stack) -> None:
    key = _key()
    body = template_body()
    with user_client(stack) as client:
        first = client.post("/templates", json=body, headers=key)
        second = client.post("/templates", json=body, headers=key)
        third = client.post("/templates", json=body, headers=key)
        assert first.status_code == 201, first.text
        assert second.status_code == first.status_code
        assert third.status_code == first.status_code
        assert second.content == first.content
        assert third.content == first.content
        templates = own_templates(client)
        assert [t["id"] for t in templates] == [first.json()["id"]]
        # The replayed resource is the real one.
        assert client.get(f"/templates/{first.json()['id']}").json() == first.json()


def test_same_key_different_body_is_409(stack: Stack) -> None:
    key = _key()
    with user_client(stack) as client:
        first = client.post("/templates", json=template_body(name="one"), headers=key)
        assert first.status_code == 201, first.text
        conflict = client.post("/templates", json=template_body(name="two"), headers=key)
        assert_error(conflict, 409)
        assert [t["name"] for t in own_templates(client)] == ["one"]
        # The original body is still replayed after the conflict.
        again = client.post("/templates", json=template_body(name="one"), headers=key)
        assert again.status_code == 201
        assert again.content == first.content


def test_same_key_on_another_route_is_409(stack: Stack) -> None:
    key = _key()
    with user_client(stack) as client:
        first = client.post("/templates", json=template_body(), headers=key)
        assert first.status_code == 201, first.text
        other = client.post(
            "/registry-auth", json={"name": "h", "username": "u", "password": "p"}, headers=key
        )
        assert_error(other, 409)
        assert client.get("/registry-auth").json() == []


def test_without_a_key_every_post_creates(stack: Stack) -> None:
    body = template_body()
    with user_client(stack) as client:
        first = client.post("/templates", json=body)
        second = client.post("/templates", json=body)
        assert first.status_code == second.status_code == 201
        assert first.json()["id"] != second.json()["id"]
        # Different keys are different requests.
        third = client.post("/templates", json=body, headers=_key())
        fourth = client.post("/templates", json=body, headers=_key())
        assert third.json()["id"] != fourth.json()["id"]
        assert len(own_templates(client)) == 4


def test_keys_are_per_user(stack: Stack) -> None:
    key = _key()
    body = template_body()
    with user_client(stack) as alice, user_client(stack) as bob:
        alices = alice.post("/templates", json=body, headers=key)
        bobs = bob.post("/templates", json=body, headers=key)
        assert alices.status_code == 201, alices.text
        assert bobs.status_code == 201, bobs.text
        assert alices.json()["id"] != bobs.json()["id"]
        assert [t["id"] for t in own_templates(alice)] == [alices.json()["id"]]
        assert [t["id"] for t in own_templates(bob)] == [bobs.json()["id"]]
        assert_error(bob.get(f"/templates/{alices.json()['id']}"), 404)
        # Bob may even use Alice's key with another body: it is his own key.
        other = bob.post("/registry-auth", json={"name": "h", "username": "u", "password": "p"})
        assert other.status_code == 201, other.text


def test_registry_auth_replay(stack: Stack) -> None:
    key = _key()
    body = {"name": "hub", "username": "u", "password": f"pw-{uuid.uuid4().hex}"}
    with user_client(stack) as client:
        first = client.post("/registry-auth", json=body, headers=key)
        second = client.post("/registry-auth", json=body, headers=key)
        assert first.status_code == second.status_code == 201
        assert first.content == second.content
        assert body["password"] not in second.text
        assert client.get("/registry-auth").json() == [first.json()]


def test_errors_are_replayed_too(stack: Stack) -> None:
    key = _key()
    body = {"name": "no image"}
    with user_client(stack) as client:
        first = client.post("/templates", json=body, headers=key)
        second = client.post("/templates", json=body, headers=key)
        assert_error(first, 400, "imageName")
        assert second.status_code == 400
        assert second.content == first.content


def test_bad_keys_are_400(stack: Stack) -> None:
    with user_client(stack) as client:
        for bad in ("k" * 256, ""):
            response = client.post(
                "/templates", json=template_body(), headers={"idempotency-key": bad}
            )
            assert_error(response, 400, "Idempotency-Key")
        assert own_templates(client) == []
        ok = client.post("/templates", json=template_body(), headers={"idempotency-key": "k" * 255})
        assert ok.status_code == 201, ok.text
