"""Fixtures of the fault suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import Up


@pytest.fixture
def up() -> Iterator[Up]:
    # Not under pytest's own temporary folder: pytest keeps that 0700, and the embedded PostgreSQL
    # runs as its own user (we are root), which must reach its data folder even when another
    # pytest run resets those permissions.
    folder = Path(tempfile.mkdtemp(prefix="gpuworker-up-"))
    os.chmod(folder, 0o755)
    stack = Up(folder)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
