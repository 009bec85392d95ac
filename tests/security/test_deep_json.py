"""Finding 12: deeply nested JSON is a 400 in the seed's shape, not a 500.

msgspec gives up on deep nesting with a RecursionError, which the api reported as an internal
error, on every route that takes a body."""

from __future__ import annotations

import uuid

from tests.api_helpers import assert_error, user_client
from tests.servers import Stack

JSON = {"content-type": "application/json"}
DEPTH = 10_000
BODIES = [
    b"[" * DEPTH,
    b"[" * DEPTH + b"]" * DEPTH,
    b'{"name": ' + b'{"a": ' * DEPTH,
    b'{"email": "a@b.co", "password": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
]


def test_deeply_nested_json_is_400(stack: Stack) -> None:
    with user_client(stack) as client:
        created = client.post("/templates", json={"name": "deep", "imageName": "busybox:latest"})
        assert created.status_code == 201, created.text
        routes = [
            ("POST", "/templates", client, False),
            ("POST", "/templates", client, True),
            ("PATCH", f"/templates/{created.json()['id']}", client, False),
            ("POST", "/registry-auth", client, False),
        ]
        with stack.client() as anonymous:
            routes += [
                ("POST", "/auth/login", anonymous, False),
                ("POST", "/auth/signup", anonymous, True),
            ]
            for method, path, c, keyed in routes:
                for body in BODIES:
                    headers = {"idempotency-key": uuid.uuid4().hex} if keyed else {}
                    response = c.request(method, path, content=body, headers={**JSON, **headers})
                    assert_error(response, 400, "nested")
        # Nothing was created along the way.
        names = [t["name"] for t in client.get("/templates").json() if not t["isPublic"]]
        assert names == ["deep"]
