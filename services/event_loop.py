"""Which asyncio event loop the roles run on, and how their garbage collector is tuned.

uvloop (libuv) is the loop a user comparing Python web stacks would pick: it roughly halves the
per-request cost of the api against the stdlib loop (bench/reads.py prints both). The stdlib loop
stays one setting away (`GPUWORKER_EVENT_LOOP=asyncio`) for an operator debugging the loop itself
or on a platform uvloop does not support.

The cyclic garbage collector: CPython's default (a young collection every 700 net allocations)
made a long-running role scan its long-lived objects (caches of aggregates, pools, the modules
themselves) over and over. bench/jobs.py, 30,000 jobs: 371 -> 430 jobs/s and queue-to-start p99
165 -> 89 ms with the thresholds below and what was built at start frozen (out of every scan).
Garbage without cycles is freed at once by reference counting whatever the thresholds; only cycles
wait longer, and GC_THRESHOLDS bounds how many allocations they wait for.
`GPUWORKER_GC_THRESHOLDS=700,10,10` puts CPython's defaults back."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.config import ConfigurationError

T = TypeVar("T")

CHOICES = ("uvloop", "asyncio")
GC_THRESHOLDS = (50_000, 20, 100)


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    choice = choice or os.environ.get("GPUWORKER_EVENT_LOOP", "uvloop")
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ConfigurationError(
        f"GPUWORKER_EVENT_LOOP must be one of {', '.join(CHOICES)}, not {choice!r}"
    )


def gc_thresholds(setting: str | None = None) -> tuple[int, int, int]:
    setting = setting or os.environ.get("GPUWORKER_GC_THRESHOLDS")
    if not setting:
        return GC_THRESHOLDS
    parts = setting.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigurationError(
            f"GPUWORKER_GC_THRESHOLDS must be three positive integers (e.g. 700,10,10), not"
            f" {setting!r}"
        )
    young, middle, old = (int(p) for p in parts)
    return young, middle, old


def tune_gc() -> None:
    """Before a role's loop starts: what its start built is kept out of every later scan."""
    thresholds = gc_thresholds()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
