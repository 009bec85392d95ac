"""`gpuworker instances connect`, `logs`, `ssh` and `ssh-keys`, against the simulated stack (the
simulated runtime publishes ports and keeps logs like the Docker one): the CLI shows the ways in
the api reports, and never builds a command from anything but them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.cli.client import ApiError
from services.cli.connect_commands import connect_lines, ssh_command
from services.ssh_keys import fingerprint
from tests.api_helpers import signup, wait_for
from tests.instance_helpers import RTX_4090, create_instance, terminate, wait_status
from tests.security.reach_helpers import make_template
from tests.servers import Stack


def _key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} ada@laptop"


def test_the_cli_shows_the_ways_in_streams_logs_and_keeps_keys(
    stack: Stack, tmp_path: Path
) -> None:
    token, _, _ = signup(stack)
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "GPUWORKER_API_URL": stack.url,
        "GPUWORKER_TOKEN": token,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    key = _key()
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(key + "\n")
    added = cli("ssh-keys", "add", str(key_file))
    assert added.returncode == 0, added.stderr
    assert fingerprint(key) in added.stdout and "ada@laptop" in added.stdout
    assert fingerprint(key) in cli("ssh-keys", "list").stdout

    with stack.client(token) as client:
        template = make_template(
            client, "local/busybox:latest", "sleep 3600", ["8888/http", "22/tcp"]
        )
        created = create_instance(client, templateId=template, gpuTypeId=RTX_4090)
        try:
            running = wait_for(
                lambda: (i := wait_status(client, created["id"], "RUNNING"))["portMappings"] and i,
                15,
                "port mappings",
            )
            ssh_port = running["portMappings"]["22"]

            shown = cli("instances", "connect", created["id"])
            assert shown.returncode == 0, shown.stderr
            assert f"{stack.url}/proxy/{created['id']}/8888/" in shown.stdout
            assert f"22 -> 127.0.0.1:{ssh_port}" in shown.stdout
            assert f"ssh root@127.0.0.1 -p {ssh_port}" in shown.stdout

            logs = cli("logs", created["id"])
            assert logs.returncode == 0, logs.stderr
            assert "simulated container started" in logs.stdout
            other, _, _ = signup(stack)
            theirs = subprocess.run(
                [sys.executable, "-m", "services.cli.main", "logs", created["id"]],
                env={**env, "GPUWORKER_TOKEN": other},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert theirs.returncode == 1 and "404" in theirs.stderr
        finally:
            terminate(client, created["id"])

    removed = cli("ssh-keys", "remove", fingerprint(key))
    assert removed.returncode == 0, removed.stderr
    assert fingerprint(key) not in removed.stdout


def test_ssh_goes_only_to_the_reported_mapping() -> None:
    running = {
        "id": "i-1",
        "name": "n",
        "status": "RUNNING",
        "urls": [],
        "publicIp": "127.0.0.1",
        "portMappings": {"22": 20022},
    }
    assert ssh_command(running, ["-i", "key"]) == [
        "ssh",
        "-p",
        "20022",
        "-i",
        "key",
        "root@127.0.0.1",
    ]
    for no_way in ({**running, "portMappings": {}}, {**running, "status": "STOPPED"}):
        with pytest.raises(ApiError):
            ssh_command(no_way, [])
    assert "  (ports answer while it is RUNNING)" in connect_lines({**running, "status": "STOPPED"})
