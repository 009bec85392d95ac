"""The example workers (examples/workers/) against the serverless stack: the busybox `sh` + `wget`
worker, run by this machine's busybox as the test image would run it, and the Python worker on the
runpod SDK, each with the environment `gpuworker endpoints worker-env` prints."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverless_helpers import account, create_endpoint, env_for, run, wait_status
from tests.servers import Stack

pytestmark = pytest.mark.timeout(180)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workers"


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_the_busybox_worker_echoes_jobs(serverless_stack: Stack, tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox, "busybox is installed by .ci/setup (busybox-static)"
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    env = {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        **env_for(serverless_stack, endpoint, "bb"),
    }
    worker = start(
        [busybox, "sh", str(EXAMPLES / "busybox" / "worker.sh")], env, tmp_path / "bb.log"
    )
    try:
        inputs = [{"n": 1}, "text", [1, 2, 3]]
        jobs = [run(client, endpoint["id"], value) for value in inputs]
        for job_id, value in zip(jobs, inputs, strict=True):
            done = wait_status(client, endpoint["id"], job_id, lambda s: s["status"] == "COMPLETED")
            assert done["output"] == value and done["workerId"] == "bb"
        health = client.get(f"/endpoints/{endpoint['id']}/health").json()
        assert health["workers"]["idle"] + health["workers"]["running"] == 1  # it pings
    finally:
        stop(worker)
        print((tmp_path / "bb.log").read_text(errors="replace"))


def test_the_python_sdk_worker_runs_unchanged(serverless_stack: Stack, tmp_path: Path) -> None:
    _key, client = account(serverless_stack)
    endpoint = create_endpoint(client)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **env_for(serverless_stack, endpoint, "py"),
    }
    handler = str(EXAMPLES / "python" / "handler.py")
    worker = start([sys.executable, handler], env, tmp_path / "py.log")
    try:
        synced = client.post(
            f"/endpoints/{endpoint['id']}/runsync", json={"input": {"prompt": "abc"}}
        )
        assert synced.status_code == 200, synced.text
        assert synced.json()["output"] == {"text": "cba", "length": 3}
    finally:
        stop(worker)
