"""Every error, from every layer, in the seed's shape {"error": {"code", "type", "message"}}.

(429 is covered by the throttle tests in test_api_auth.py, through the same assert_error.)"""

from __future__ import annotations

import json
import time
import uuid

import jwt

from tests.api_helpers import PASSWORD, assert_error, signup, template_body, user_client
from tests.servers import Stack

JSON = {"content-type": "application/json"}


def test_unknown_route_is_404_with_or_without_token(stack: Stack) -> None:
    with stack.client() as anonymous, user_client(stack) as client:
        for c in (anonymous, client):
            assert_error(c.get("/no-such-route"), 404)
            assert_error(c.post("/no/such/route", json={}), 404)
            assert_error(c.get("/templates/a/b/c"), 404)


def test_wrong_method_is_405_naming_the_allowed_ones(stack: Stack) -> None:
    with user_client(stack) as client:
        response = client.put("/health")
        message = assert_error(response, 405, "GET")
        assert "GET" in response.headers.get("allow", message)
        assert_error(client.put("/templates"), 405)
        assert_error(client.delete("/templates"), 405)
        assert_error(client.patch("/registry-auth"), 405)
        assert_error(client.get("/auth/login"), 405, "POST")
        assert_error(client.delete("/blog/posts"), 405)


def test_malformed_json_is_400(stack: Stack) -> None:
    with user_client(stack) as client:
        for raw in (b"{nope", b'{"name": "x",', b"", b"\xff\xfe"):
            assert_error(client.post("/templates", content=raw, headers=JSON), 400)
    with stack.client() as anonymous:
        assert_error(anonymous.post("/auth/signup", content=b"{'single': 1}", headers=JSON), 400)


def test_wrong_type_is_400_naming_the_field(stack: Stack) -> None:
    with user_client(stack) as client:
        response = client.post("/templates", json=template_body(containerDiskInGb="big"))
        assert_error(response, 400, "containerDiskInGb")
        response = client.post("/templates", json=template_body(volumeInGb=1.5))
        assert_error(response, 400, "volumeInGb")
        response = client.post("/templates", json=template_body(env=["A=1"]))
        assert_error(response, 400, "env")
        response = client.post("/registry-auth", json={"name": 1, "username": "u", "password": "p"})
        assert_error(response, 400, "name")
    with stack.client() as anonymous:
        response = anonymous.post(
            "/auth/signup", json={"name": "N", "email": 42, "password": PASSWORD}
        )
        assert_error(response, 400, "email")


def test_unknown_field_is_400_naming_it(stack: Stack) -> None:
    with user_client(stack) as client:
        response = client.post("/templates", json=template_body(gpuCount=2))
        assert_error(response, 400, "gpuCount")
        created = client.post("/templates", json=template_body())
        assert created.status_code == 201, created.text
        response = client.patch(f"/templates/{created.json()['id']}", json={"isPublic": True})
        assert_error(response, 400, "isPublic")
    with stack.client() as anonymous:
        response = anonymous.post(
            "/auth/signup",
            json={"name": "N", "email": "u@example.com", "password": PASSWORD, "admin": True},
        )
        assert_error(response, 400, "admin")


def test_missing_required_field_is_400_naming_it(stack: Stack) -> None:
    with user_client(stack) as client:
        assert_error(client.post("/templates", json={"name": "x"}), 400, "imageName")
        assert_error(client.post("/templates", json={"imageName": "x"}), 400, "name")
        response = client.post("/registry-auth", json={"name": "hub", "username": "u"})
        assert_error(response, 400, "password")
    with stack.client() as anonymous:
        response = anonymous.post("/auth/signup", json={"name": "N", "password": PASSWORD})
        assert_error(response, 400, "email")
        assert_error(anonymous.post("/auth/login", json={"email": "a@b.co"}), 400, "password")


def test_body_that_is_not_an_object_is_400(stack: Stack) -> None:
    with user_client(stack) as client:
        for body in ([template_body()], [], "a string", 12, None):
            response = client.post("/templates", content=json.dumps(body), headers=JSON)
            assert_error(response, 400)
        assert_error(client.post("/registry-auth", json=[1, 2]), 400)


def test_oversized_body_is_413(stack: Stack) -> None:
    big = json.dumps(template_body(readme="a" * (1024 * 1024 + 16))).encode()
    assert len(big) > 1024 * 1024
    with user_client(stack) as client:
        assert_error(client.post("/templates", content=big, headers=JSON), 413)
        created = client.post("/templates", json=template_body())
        assert created.status_code == 201, created.text
        patch = json.dumps({"readme": "b" * (1024 * 1024 + 16)}).encode()
        response = client.patch(f"/templates/{created.json()['id']}", content=patch, headers=JSON)
        assert_error(response, 413)
    with stack.client() as anonymous:
        huge = json.dumps({"name": "n" * (1024 * 1024 + 16), "email": "a@b.co", "password": "p"})
        assert_error(anonymous.post("/auth/signup", content=huge, headers=JSON), 413)


def test_missing_garbage_and_expired_tokens_are_401(stack: Stack) -> None:
    access, _, _ = signup(stack)
    with stack.client(access) as client:
        user_id = client.get("/me").json()["id"]
    now = int(time.time())
    expired = jwt.encode(
        {"sub": user_id, "iat": now - 3600, "exp": now - 1800},
        stack.env["GPUWORKER_JWT_SECRET"],
        "HS256",
    )
    routes = [
        ("GET", "/me"),
        ("GET", "/templates"),
        ("POST", "/templates"),
        ("GET", "/templates/pytorch-cuda12-2.1"),
        ("PATCH", "/templates/pytorch-cuda12-2.1"),
        ("DELETE", "/templates/pytorch-cuda12-2.1"),
        ("GET", "/registry-auth"),
        ("POST", "/registry-auth"),
        ("DELETE", f"/registry-auth/{uuid.uuid4()}"),
    ]
    for token in (None, "garbage", "Bearer", expired):
        with stack.client(token) as client:
            for method, path in routes:
                body: dict[str, object] | None = {} if method in ("POST", "PATCH") else None
                response = client.request(method, path, json=body)
                assert_error(response, 401)
    # The header without a token in it.
    with stack.client() as client:
        assert_error(client.get("/me", headers={"authorization": "Bearer"}), 401)
        assert_error(client.get("/me", headers={"authorization": ""}), 401)
        # A valid token under another scheme, or bare, is not a Bearer token.
        assert_error(client.get("/me", headers={"authorization": f"Basic {access}"}), 401)
        assert_error(client.get("/me", headers={"authorization": access}), 401)
        assert client.get("/me", headers={"authorization": f"bearer {access}"}).status_code == 200


def test_conflicts_are_409(stack: Stack) -> None:
    _, _, email = signup(stack)
    with stack.client() as anonymous:
        response = anonymous.post(
            "/auth/signup", json={"name": "Dup", "email": email, "password": PASSWORD}
        )
        assert_error(response, 409)
    with user_client(stack) as client:
        key = {"idempotency-key": uuid.uuid4().hex}
        first = client.post("/templates", json=template_body(), headers=key)
        assert first.status_code == 201, first.text
        assert_error(client.post("/templates", json=template_body(), headers=key), 409)


def test_validation_messages_do_not_echo_internals(stack: Stack) -> None:
    with user_client(stack) as client:
        response = client.post("/templates", json=template_body(containerDiskInGb="big"))
    message = assert_error(response, 400)
    for leak in ("Traceback", "litestar", "msgspec", 'File "', "TemplateIn"):
        assert leak not in message, message
