"""Finding 2 (issue 7): an image pulled with one tenant's credential is usable only by tenants the
registry lets pull it, checked on every use (AlwaysPullImages: services/agent/image_access.py).

Real Docker and a real registry on 127.0.0.1 (tests/registry_server.py) holding Alice's private
image. Alice runs it with her saved credential; then Bob names the very same reference, with no
credential or a wrong one, while the image sits on the host: his instance FAILS with a reason he
can act on, and no container of his runs it. Naming it by image ID is refused at the API."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from services.agent.docker_runtime import DockerRuntime
from services.agent.image_access import ImageAccess, ImagePolicy
from services.agent.runtime import ContainerSpec, ImagePullFailed, RegistryCredentials
from tests.api_helpers import assert_error, template_body
from tests.docker_fixtures import docker_client  # noqa: F401
from tests.instance_helpers import create_instance, terminate, wait_status
from tests.security.conftest import SECRET, SecurityStack

UP_S = 30.0


def _credential(client: httpx.Client, username: str, password: str) -> str:
    response = client.post(
        "/registry-auth",
        json={"name": f"reg-{uuid.uuid4().hex[:6]}", "username": username, "password": password},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _template(client: httpx.Client, image: str, auth_id: str | None = None) -> str:
    body = template_body(imageName=image, dockerStartCmd="sleep 3600")
    if auth_id is not None:
        body["containerRegistryAuthId"] = auth_id
    response = client.post("/templates", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _containers(engine: docker.DockerClient, instance_id: str) -> list[Any]:
    return list(engine.containers.list(all=True, filters={"name": f"gpuworker-{instance_id}"}))


def _refused(
    client: httpx.Client, engine: docker.DockerClient, image: str, auth_id: str | None
) -> None:
    created = create_instance(client, templateId=_template(client, image, auth_id))
    try:
        failed = wait_status(client, created["id"], "FAILED", UP_S)
        reason = failed["failureReason"]
        assert "image not found or access denied" in reason, reason
        assert "registry credential" in reason, reason
        assert image in reason, reason
        assert not _containers(engine, created["id"])
    finally:
        terminate(client, created["id"], UP_S)


def test_a_private_image_runs_only_for_tenants_the_registry_lets_pull_it(
    security_stack: SecurityStack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    private = security_stack.private
    registry = private.registry
    with security_stack.tenant() as alice, security_stack.tenant() as bob:
        # Alice runs her private image with her saved credential.
        alice_auth = _credential(alice, private.username, private.password)
        created = create_instance(alice, templateId=_template(alice, private.reference, alice_auth))
        try:
            wait_status(alice, created["id"], "RUNNING", UP_S)
            (container,) = _containers(docker_client, created["id"])
            code, output = container.exec_run(["cat", "/secret"])
            assert (code, bytes(output).decode().strip()) == (0, SECRET)
            # Created from the digest the registry vouched for, not from the (movable) tag.
            assert container.attrs["Config"]["Image"] == (
                f"{registry.address}/alice/private@{private.digest}"
            )
            image_id = str(container.attrs["Image"])
            # The image is on the host now, under its name too (as any earlier pull by tag
            # would leave it).
            on_host = docker_client.images.get(f"{registry.address}/alice/private@{private.digest}")
            assert on_host.id == image_id
            on_host.tag(f"{registry.address}/alice/private", "1")

            # Bob names the same reference: no credential, then a wrong one; the registry
            # refuses his pulls, and the image on the host does not help him.
            asked_before = len(registry.requests)
            _refused(bob, docker_client, private.reference, None)
            wrong = _credential(bob, private.username, "not-alices-password")
            _refused(bob, docker_client, private.reference, wrong)
            _refused(bob, docker_client, f"{registry.address}/alice/private@{private.digest}", None)
            refused = [r for r in registry.requests[asked_before:] if "/manifests/" in r.path]
            assert refused and all(r.status == 401 for r in refused), refused

            # By its image ID (whole, a prefix, "sha256:"): refused before anything runs.
            hex_id = image_id.removeprefix("sha256:")
            for name in (image_id, hex_id, hex_id[:12]):
                response = bob.post("/templates", json=template_body(imageName=name))
                assert_error(response, 400, "imageName", "image ID")

            # Alice can still start another one: checked again, with her credential.
            again = create_instance(
                alice, templateId=_template(alice, private.reference, alice_auth)
            )
            wait_status(alice, again["id"], "RUNNING", UP_S)
            terminate(alice, again["id"], UP_S)
        finally:
            terminate(alice, created["id"], UP_S)


async def test_the_hosts_own_docker_login_is_never_lent_to_a_tenant(
    security_stack: SecurityStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Docker SDK sends the host's `docker login` when a pull names no credential: the
    operator's access must not become every tenant's."""
    private = security_stack.private
    login = base64.b64encode(f"{private.username}:{private.password}".encode()).decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {private.registry.address: {"auth": login}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    # The stack's environment is its own (conftest): this runtime, in the test's process, is
    # allowed the test registry as the stack's agent is.
    monkeypatch.setenv("GPUWORKER_ALLOWED_REGISTRIES", private.registry.address)
    runtime = DockerRuntime(f"t-login-{uuid.uuid4().hex[:8]}", pull_timeout_s=30)
    spec = ContainerSpec(
        instance_id=f"i-{uuid.uuid4().hex[:12]}",
        image=private.reference,
        command="sleep 60",
        owner_id="bob",
    )
    try:
        with pytest.raises(ImagePullFailed, match="image not found or access denied"):
            await runtime.create_and_start(spec)
        assert (await runtime.inspect(spec.instance_id)).status == "missing"
    finally:
        await runtime.remove(spec.instance_id)
        await runtime.close()


# -- the verification cache (pure) ---------------------------------------------------------------


def test_a_verification_answers_only_for_its_tenant_and_credential() -> None:
    now = [1000.0]
    access = ImageAccess(ImagePolicy(verify_ttl_s=60), clock=lambda: now[0])
    ref = access.reference("registry.example.com/alice/private:1")
    alice = RegistryCredentials(username="alice", password="pw", registry="registry.example.com")
    resolved = "registry.example.com/alice/private@sha256:" + "a" * 64

    access.remember("alice", ref, alice, resolved)

    assert access.verified("alice", ref, alice) == resolved
    assert access.verified("bob", ref, alice) is None  # another tenant, even with her credential
    assert access.verified("alice", ref, None) is None  # her credential removed from the template
    changed = RegistryCredentials(username="alice", password="new", registry="registry.example.com")
    assert access.verified("alice", ref, changed) is None  # the credential changed
    other_tag = access.reference("registry.example.com/alice/private:2")
    assert access.verified("alice", other_tag, alice) is None
    now[0] += 59.9
    assert access.verified("alice", ref, alice) == resolved
    now[0] += 0.2
    assert access.verified("alice", ref, alice) is None  # asked again after the TTL
    access.remember("alice", ref, alice, resolved)
    access.forget("alice", "registry.example.com/alice/private:1", alice)
    assert access.verified("alice", ref, alice) is None


def test_preloaded_images_are_the_operators_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    default = ImageAccess(ImagePolicy())
    assert default.is_preloaded(default.reference("local/busybox:latest"))
    assert not default.is_preloaded(default.reference("busybox:latest"))
    assert not default.is_preloaded(default.reference("registry.example.com/local/busybox:1"))
    monkeypatch.setenv("GPUWORKER_PRELOADED_IMAGES", "nvcr.io/nvidia/*, busybox")
    configured = ImageAccess(ImagePolicy.from_env())
    assert configured.is_preloaded(configured.reference("nvcr.io/nvidia/pytorch:24.01"))
    assert configured.is_preloaded(configured.reference("busybox"))
    assert not configured.is_preloaded(configured.reference("local/busybox:latest"))
    monkeypatch.setenv("GPUWORKER_PRELOADED_IMAGES", "")
    assert ImagePolicy.from_env().preloaded == ()
