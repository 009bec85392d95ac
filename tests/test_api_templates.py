"""GET/POST /templates, GET/PATCH/DELETE /templates/{id}: CRUD, built-ins, isolation,
read-your-writes."""

from __future__ import annotations

from typing import Any

from tests.api_helpers import assert_error, own_templates, template_body, user_client
from tests.servers import Stack

BUILTIN = "pytorch-cuda12-2.1"
FIELDS = {
    "id",
    "name",
    "imageName",
    "dockerStartCmd",
    "containerDiskInGb",
    "volumeInGb",
    "volumeMountPath",
    "env",
    "ports",
    "readme",
    "isPublic",
    "createdAt",
    "updatedAt",
}


def _create(client: Any, **fields: Any) -> dict[str, Any]:
    response = client.post("/templates", json=template_body(**fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_applies_defaults(stack: Stack) -> None:
    with user_client(stack) as client:
        response = client.post("/templates", json={"name": "minimal", "imageName": "alpine:3"})
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) >= FIELDS, created
        assert created["name"] == "minimal"
        assert created["imageName"] == "alpine:3"
        assert created["dockerStartCmd"] is None
        assert created["containerDiskInGb"] == 20
        assert created["volumeInGb"] == 0
        assert created["volumeMountPath"] == "/workspace"
        assert created["env"] == {}
        assert created["ports"] == []
        assert created["readme"] == ""
        assert created["isPublic"] is False
        assert isinstance(created["id"], str) and created["id"]
        assert created["createdAt"] == created["updatedAt"]
        fetched = client.get(f"/templates/{created['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == created


def test_create_round_trips_every_field(stack: Stack) -> None:
    fields = {
        "name": "pytorch-2.1",
        "imageName": "nvcr.io/nvidia/pytorch:2.1.0-py3.10-cuda12.1",
        "dockerStartCmd": "bash -c 'jupyter lab --ip=0.0.0.0'",
        "containerDiskInGb": 40,
        "volumeInGb": 50,
        "volumeMountPath": "/data",
        "env": {"HF_HOME": "/data/hf", "_PRIVATE": "", "MODEL": "a=b c"},
        "ports": ["8888/http", "22/tcp", "5353/udp"],
        "readme": "# Hello\nmultiline ✓",
    }
    with user_client(stack) as client:
        response = client.post("/templates", json=fields)
        assert response.status_code == 201, response.text
        created = response.json()
        for key, value in fields.items():
            assert created[key] == value, key
        fetched = client.get(f"/templates/{created['id']}").json()
        listed = [t for t in client.get("/templates").json() if t["id"] == created["id"]]
    for key, value in fields.items():
        assert fetched[key] == value, key
    assert listed == [fetched]


def test_patch_changes_only_the_given_fields(stack: Stack) -> None:
    with user_client(stack) as client:
        original = _create(
            client, env={"A": "1"}, ports=["80/http"], readme="r", dockerStartCmd="run"
        )
        response = client.patch(f"/templates/{original['id']}", json={"name": "renamed"})
        assert response.status_code == 200, response.text
        patched = response.json()
        assert patched["name"] == "renamed"
        for key in FIELDS - {"name", "updatedAt"}:
            assert patched[key] == original[key], key
        assert patched["updatedAt"] >= original["updatedAt"]

        response = client.patch(
            f"/templates/{original['id']}",
            json={"env": {"B": "2"}, "ports": [], "containerDiskInGb": 100},
        )
        assert response.status_code == 200, response.text
        patched = response.json()
        assert patched["env"] == {"B": "2"}
        assert patched["ports"] == []
        assert patched["containerDiskInGb"] == 100
        assert patched["name"] == "renamed"
        assert patched["imageName"] == original["imageName"]
        assert patched["dockerStartCmd"] == "run"
        assert patched["readme"] == "r"

        # An empty patch changes nothing and still answers with the template.
        empty = client.patch(f"/templates/{original['id']}", json={})
        assert empty.status_code == 200, empty.text
        assert empty.json()["name"] == "renamed"

        fetched = client.get(f"/templates/{original['id']}").json()
    assert fetched == patched


def test_patch_validates_like_create(stack: Stack) -> None:
    with user_client(stack) as client:
        template = _create(client)
        url = f"/templates/{template['id']}"
        assert_error(client.patch(url, json={"containerDiskInGb": 0}), 400, "containerDiskInGb")
        assert_error(client.patch(url, json={"name": ""}), 400, "name")
        assert_error(client.patch(url, json={"ports": ["http"]}), 400, "ports")
        assert_error(client.patch(url, json={"env": {"BAD-KEY": "1"}}), 400, "env")
        assert_error(client.patch(url, json={"imageName": "has space"}), 400, "imageName")
        assert client.get(url).json() == template


def test_delete_then_gone(stack: Stack) -> None:
    with user_client(stack) as client:
        keep = _create(client)
        gone = _create(client)
        response = client.delete(f"/templates/{gone['id']}")
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert_error(client.get(f"/templates/{gone['id']}"), 404)
        ids = [t["id"] for t in client.get("/templates").json()]
        assert gone["id"] not in ids
        assert keep["id"] in ids
        assert_error(client.delete(f"/templates/{gone['id']}"), 404)
        assert_error(client.patch(f"/templates/{gone['id']}", json={"name": "zombie"}), 404)


def test_unknown_ids_are_404(stack: Stack) -> None:
    with user_client(stack) as client:
        for template_id in ("01900000-0000-7000-8000-000000000000", "no-such-template", "*", "a>b"):
            assert_error(client.get(f"/templates/{template_id}"), 404)
            assert_error(client.patch(f"/templates/{template_id}", json={"name": "x"}), 404)
            assert_error(client.delete(f"/templates/{template_id}"), 404)


def test_invalid_env_and_ports_are_400(stack: Stack) -> None:
    with user_client(stack) as client:
        for env in ({"1BAD": "v"}, {"WITH SPACE": "v"}, {"": "v"}, {"A-B": "v"}):
            assert_error(client.post("/templates", json=template_body(env=env)), 400, "env")
        for ports in (["80"], ["80/ftp"], ["0/tcp"], ["http/80"], ["123456/tcp"], [80]):
            assert_error(client.post("/templates", json=template_body(ports=ports)), 400, "ports")
        for disk in (0, -1, 4001):
            response = client.post("/templates", json=template_body(containerDiskInGb=disk))
            assert_error(response, 400, "containerDiskInGb")
        assert_error(client.post("/templates", json=template_body(volumeInGb=-1)), 400)
        response = client.post("/templates", json=template_body(volumeMountPath="relative"))
        assert_error(response, 400, "volumeMountPath")
        assert_error(client.post("/templates", json=template_body(name="")), 400, "name")
        assert own_templates(client) == []


def test_builtin_template_is_visible_and_read_only(stack: Stack) -> None:
    with user_client(stack) as first, user_client(stack) as second:
        before = first.get(f"/templates/{BUILTIN}")
        assert before.status_code == 200, before.text
        builtin = before.json()
        assert builtin["id"] == BUILTIN
        assert builtin["isPublic"] is True
        assert builtin["imageName"]
        assert second.get(f"/templates/{BUILTIN}").json() == builtin
        for client in (first, second):
            listed = [t for t in client.get("/templates").json() if t["id"] == BUILTIN]
            assert listed == [builtin]

        message = assert_error(first.patch(f"/templates/{BUILTIN}", json={"name": "mine"}), 403)
        assert BUILTIN in message or "built" in message
        assert_error(first.delete(f"/templates/{BUILTIN}"), 403)
        after = second.get(f"/templates/{BUILTIN}")
    assert after.status_code == 200, after.text
    assert after.json() == builtin


def test_other_users_templates_do_not_exist(stack: Stack) -> None:
    with user_client(stack) as alice, user_client(stack) as bob:
        template = _create(alice)
        url = f"/templates/{template['id']}"
        assert_error(bob.get(url), 404)
        assert_error(bob.patch(url, json={"name": "stolen"}), 404)
        assert_error(bob.delete(url), 404)
        assert template["id"] not in [t["id"] for t in bob.get("/templates").json()]
        bobs = _create(bob)
        assert bobs["id"] not in [t["id"] for t in alice.get("/templates").json()]
        assert_error(alice.get(f"/templates/{bobs['id']}"), 404)
        # Bob's attempts changed nothing.
        still = alice.get(url)
    assert still.status_code == 200, still.text
    assert still.json() == template


def test_read_your_writes(stack: Stack) -> None:
    with user_client(stack) as client:
        created_ids: list[str] = []
        for i in range(20):
            created = _create(client, name=f"ryw-{i}")
            created_ids.append(created["id"])
            fetched = client.get(f"/templates/{created['id']}")
            assert fetched.status_code == 200, f"create #{i} not visible: {fetched.text}"
            assert fetched.json() == created
            listed = [t["id"] for t in own_templates(client)]
            assert listed == created_ids, f"create #{i}: list is {listed}"
        # Writes other than create are visible at once too.
        for template_id in created_ids[:5]:
            patched = client.patch(f"/templates/{template_id}", json={"readme": "changed"})
            assert patched.status_code == 200, patched.text
            assert client.get(f"/templates/{template_id}").json()["readme"] == "changed"
            assert client.delete(f"/templates/{template_id}").status_code == 204
            assert_error(client.get(f"/templates/{template_id}"), 404)
            assert template_id not in [t["id"] for t in own_templates(client)]
