"""GET/POST /registry-auth and DELETE /registry-auth/{id}: the password goes in, never comes out."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api_helpers import assert_error, user_client
from tests.servers import Stack

FIELDS = {"id", "name", "username", "createdAt"}


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


def _create(client: Any, password: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {
        "name": f"hub-{uuid.uuid4().hex[:6]}",
        "username": "robot",
        "password": password or f"pw-{uuid.uuid4().hex}",
        **fields,
    }
    response = client.post("/registry-auth", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_create_returns_no_password(stack: Stack) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with user_client(stack) as client:
        response = client.post(
            "/registry-auth",
            json={"name": "Docker Hub", "username": "ada", "password": password},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) == FIELDS
        assert created["name"] == "Docker Hub"
        assert created["username"] == "ada"
        assert isinstance(created["id"], str) and created["id"]
        assert isinstance(created["createdAt"], str) and created["createdAt"]
        assert password not in response.text
        assert not any("password" in key.lower() for key in _walk_keys(created))

        listed = client.get("/registry-auth")
    assert listed.status_code == 200, listed.text
    assert listed.json() == [created]
    assert password not in listed.text
    assert not any("password" in key.lower() for key in _walk_keys(listed.json()))


def test_list_starts_empty_and_keeps_creation_order(stack: Stack) -> None:
    with user_client(stack) as client:
        assert client.get("/registry-auth").json() == []
        first = _create(client, name="first")
        second = _create(client, name="second")
        assert client.get("/registry-auth").json() == [first, second]


def test_delete_then_gone_and_delete_again_is_404(stack: Stack) -> None:
    with user_client(stack) as client:
        keep = _create(client)
        gone = _create(client)
        response = client.delete(f"/registry-auth/{gone['id']}")
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert client.get("/registry-auth").json() == [keep]
        assert_error(client.delete(f"/registry-auth/{gone['id']}"), 404)


def test_unknown_ids_are_404(stack: Stack) -> None:
    with user_client(stack) as client:
        for auth_id in (str(uuid.uuid4()), "nope", "*", "a>b"):
            assert_error(client.delete(f"/registry-auth/{auth_id}"), 404)


def test_other_users_credentials_do_not_exist(stack: Stack) -> None:
    with user_client(stack) as alice, user_client(stack) as bob:
        alices = _create(alice)
        assert alice.get("/registry-auth").json() == [alices]
        assert bob.get("/registry-auth").json() == []
        assert_error(bob.delete(f"/registry-auth/{alices['id']}"), 404)
        bobs = _create(bob)
        assert bob.get("/registry-auth").json() == [bobs]
        assert_error(alice.delete(f"/registry-auth/{bobs['id']}"), 404)
        # Neither attempt removed anything.
        assert alice.get("/registry-auth").json() == [alices]
        assert bob.get("/registry-auth").json() == [bobs]


def test_validation(stack: Stack) -> None:
    with user_client(stack) as client:
        base = {"name": "hub", "username": "u", "password": "p"}
        for field in ("name", "username", "password"):
            missing = {k: v for k, v in base.items() if k != field}
            assert_error(client.post("/registry-auth", json=missing), 400, field)
            empty = {**base, field: ""}
            assert_error(client.post("/registry-auth", json=empty), 400, field)
        assert_error(client.post("/registry-auth", json={**base, "server": "x"}), 400, "server")
        assert_error(client.post("/registry-auth", json={**base, "name": "   "}), 400, "name")
        assert client.get("/registry-auth").json() == []
