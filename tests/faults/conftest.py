"""Fixtures of the fault suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import Up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    os.chmod(tmp_path, 0o755)  # the embedded PostgreSQL runs as its own user when we are root
    stack = Up(tmp_path)
    yield stack
    stack.stop()
