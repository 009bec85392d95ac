"""Which asyncio event loop the roles run on.

uvloop (libuv) is the loop a user comparing Python web stacks would pick: it roughly halves the
per-request cost of the api against the stdlib loop (bench/reads.py prints both). The stdlib loop
stays one setting away (`GPUWORKER_EVENT_LOOP=asyncio`) for an operator debugging the loop itself
or on a platform uvloop does not support."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.config import ConfigurationError

T = TypeVar("T")

CHOICES = ("uvloop", "asyncio")


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


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
