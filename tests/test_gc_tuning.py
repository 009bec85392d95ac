"""The long-running roles tune CPython's garbage collector before their loop starts
(services/event_loop.py); an operator can put the defaults back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.config import ConfigurationError
from services.event_loop import GC_THRESHOLDS, gc_thresholds

# What a role's loop sees: its thresholds, and how much of its start was frozen.
PROBE = """
import asyncio, gc, json
from services import event_loop
async def seen():
    return {"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps(event_loop.run(seen())))
"""


def _role_sees(**env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k != "GPUWORKER_GC_THRESHOLDS"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,
        env={**base, **env},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    seen: dict[str, object] = json.loads(done.stdout)
    return seen


def test_a_roles_loop_runs_with_the_tuned_collector_and_its_start_frozen() -> None:
    seen = _role_sees()
    assert seen["thresholds"] == list(GC_THRESHOLDS)
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000


def test_an_operator_can_put_the_defaults_back() -> None:
    seen = _role_sees(GPUWORKER_GC_THRESHOLDS="700,10,10")
    assert seen["thresholds"] == [700, 10, 10]


@pytest.mark.parametrize("bad", ["700,10", "700,10,ten", "0,10,10", "-1,10,10", "700,,10"])
def test_a_bad_setting_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="GPUWORKER_GC_THRESHOLDS"):
        gc_thresholds(bad)
