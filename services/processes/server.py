"""The deciders role: answers commands from the `deciders` queue group on `cmd.>`.

The subject says who sent a command (api, an agent for its host, an operator); a command is
checked against what that sender may say (entitlements.py) before any decider sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from events.subjects import COMMANDS_ROOT, DECIDER_QUEUE, channel_of
from services.command_wire import CommandEnvelope, Reply
from services.deciders.entitlements import check_entitled, head_of
from services.errors import BadRequest, ErrorBody, GpuWorkerError
from services.processes.runner import DeciderRunner

log = logging.getLogger("gpuworker.deciders")

MAX_IN_FLIGHT = 256


class DeciderServer:
    def __init__(
        self,
        nc: NatsClient,
        runner: DeciderRunner,
        services: dict[str, Callable[[CommandEnvelope], Awaitable[Reply]]] | None = None,
    ) -> None:
        self._nc = nc
        self._runner = runner
        # Subjects that are not one aggregate's commands (e.g. `cmd.placement`) go to a service.
        self._services = services or {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._decode = msgspec.json.Decoder(CommandEnvelope).decode
        self._encode = msgspec.json.Encoder().encode
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            f"{COMMANDS_ROOT}.>", queue=DECIDER_QUEUE, cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        # Commands on different aggregates are independent: handle them concurrently; the event
        # store's per-aggregate concurrency check keeps same-aggregate races correct.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            channel = channel_of(msg.subject)
            if channel is None:
                raise BadRequest(f"{msg.subject} is not a command subject")
            envelope = self._decode(msg.data)
            check_entitled(channel, envelope.aggregate_id, head_of(envelope.command))
            if channel.sender != "api" and envelope.source is not None:
                # Only the api knows a client's address; nobody else may put one in the audit log.
                envelope = msgspec.structs.replace(envelope, source=None)
            service = self._services.get(channel.aggregate_type)
            if service is not None:
                reply = await service(envelope)
            else:
                reply = await self._runner.handle(channel.aggregate_type, envelope)
        except GpuWorkerError as exc:
            if exc.code == 403:
                log.warning("refused a command on %s: %s", msg.subject, exc.message)
            reply = Reply(error=exc.body())
        except (msgspec.ValidationError, KeyError) as exc:
            reply = Reply(error=BadRequest(f"malformed command: {exc}").body())
        except Exception:
            log.exception("command on %s failed", msg.subject)
            reply = Reply(
                error=ErrorBody(
                    code=500, type="internal_error", message="the command could not be processed"
                )
            )
        if msg.reply:
            try:
                await msg.respond(self._encode(reply))
            except Exception as exc:
                log.warning("could not answer %s: %s", msg.subject, exc)
