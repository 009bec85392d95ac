"""Fixtures of the fault suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import Up

# A load test's customers are not limited by quotas, and its simulated host has room for their
# volumes; each starts with more credit than the load can spend.
LOAD = {
    "GPUWORKER_QUOTA_GPUS": "0",
    "GPUWORKER_QUOTA_VOLUMES": "0",
    "GPUWORKER_QUOTA_VOLUME_GB": "0",
    "GPUWORKER_QUOTA_TEMPLATES": "0",
    "GPUWORKER_HOST_DISK_GB": "1000000",
    "GPUWORKER_SIGNUP_CREDIT": "1000",
}


@pytest.fixture
def up() -> Iterator[Up]:
    # Not under pytest's own temporary folder: pytest keeps that 0700, and the embedded PostgreSQL
    # runs as its own user (we are root), which must reach its data folder even when another
    # pytest run resets those permissions.
    folder = Path(tempfile.mkdtemp(prefix="gpuworker-up-"))
    os.chmod(folder, 0o755)
    stack = Up(folder, LOAD)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
