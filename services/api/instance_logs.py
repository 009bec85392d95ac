"""GET /instances/{id}/logs: what the instance's container printed, from the agent of its host over
NATS (services/container_logs.py); the api never touches a Docker socket.

Plain text, one line per log line (`?timestamps=true` puts the time first). `?follow=true` keeps
the response open and sends each new line as it is written (chunked), until the container stops
or the client goes away: Litestar cancels the stream when the client disconnects, the stream's
subscription goes, and the agent's next chunk finds no one and ends its side. Only the owner;
anyone else gets 404, as for the instance itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import ExitStack
from datetime import datetime
from typing import Annotated, Any

import msgspec
import nats.errors
from litestar import Request, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from projections.catalog import PROJECTIONS
from services.api import read_models
from services.api.connection_limits import ConnectionLimiter
from services.api.context import context_of
from services.container_logs import (
    DEFAULT_TAIL,
    IDLE_BEAT_S,
    MAX_TAIL,
    LogAnswer,
    LogChunk,
    LogEntry,
    LogRequest,
    log_request_subject,
    log_stream_subject,
)
from services.deciders.instance import InstanceState
from services.errors import NotFound, ServiceUnavailable, from_body

INSTANCES = PROJECTIONS["instances"]
# A stream from which nothing (not even the agent's idle beat) came for this long has lost its
# agent: it ends.
SILENT_S = 3 * IDLE_BEAT_S
# Statuses whose container may not exist (yet, or any more): the agent says so if it does not.
_NO_LOGS = frozenset({"TERMINATED"})


class LogReader:
    """Opens a host's log stream for one container (the protocol is services/container_logs.py).
    `open` raises the agent's refusal before any line, so a route can still answer with a status;
    the returned iterator then yields chunks until the last."""

    def __init__(self, nc: NatsClient, timeout_s: float, silent_s: float = SILENT_S) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._silent_s = silent_s
        self._encode = msgspec.json.Encoder().encode
        self._answer = msgspec.json.Decoder(LogAnswer).decode
        self._chunk = msgspec.json.Decoder(LogChunk).decode

    async def open(
        self,
        host_id: str,
        instance_id: str,
        tail: int,
        since: datetime | None,
        follow: bool,
    ) -> AsyncGenerator[list[LogEntry], None]:
        stream = log_stream_subject(host_id, uuid.uuid4().hex)
        subscription = await self._nc.subscribe(stream)
        try:
            request = LogRequest(
                instance_id=instance_id, stream=stream, tail=tail, since=since, follow=follow
            )
            reply = await self._nc.request(
                log_request_subject(host_id), self._encode(request), timeout=self._timeout_s
            )
            answer = self._answer(reply.data)
            if answer.error is not None:
                raise from_body(answer.error)
        except nats.errors.NoRespondersError:
            await subscription.unsubscribe()
            raise ServiceUnavailable(
                f"the instance's host ({host_id}) is not answering: its agent is not running;"
                " retry once the host is back"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            await subscription.unsubscribe()
            raise ServiceUnavailable(
                f"the instance's host ({host_id}) did not answer within {self._timeout_s:g}s;"
                " retry shortly"
            ) from None
        except BaseException:
            await subscription.unsubscribe()
            raise
        return self._chunks(subscription)

    async def _chunks(self, subscription: Subscription) -> AsyncGenerator[list[LogEntry], None]:
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=self._silent_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    return  # the agent went silent (gone with its host): the stream ends
                try:
                    chunk = self._chunk(msg.data)
                except msgspec.ValidationError:
                    return
                if chunk.lines:
                    yield chunk.lines
                # Taken (the reader asked for more): the agent may send the next.
                if msg.reply:
                    await msg.respond(b"")
                if chunk.end:
                    return
        finally:
            await subscription.unsubscribe()


def _text(lines: list[LogEntry], timestamps: bool) -> bytes:
    if timestamps:
        return "".join(
            f"{line.at.isoformat() if line.at else '-'} {line.text}\n" for line in lines
        ).encode()
    return "".join(f"{line.text}\n" for line in lines).encode()


async def _body(
    chunks: AsyncGenerator[list[LogEntry], None], timestamps: bool, held: ExitStack
) -> AsyncIterator[bytes]:
    with held:
        try:
            async for lines in chunks:
                yield _text(lines, timestamps)
        finally:
            await chunks.aclose()


# A logs route's query parameters (an instance's, a serverless worker's).
Tail = Annotated[
    int, QueryParameter(ge=0, le=MAX_TAIL, description="the last N lines (before any new ones)")
]
Since = Annotated[
    datetime | None, QueryParameter(description="only lines written at or after this time")
]
Follow = Annotated[bool, QueryParameter(description="keep streaming new lines")]
Timestamps = Annotated[bool, QueryParameter(description="each line starts with its time")]


@get(
    "/instances/{instance_id:str}/logs",
    tags=["instances"],
    summary="What the instance's container printed (follow=true streams new lines)",
    media_type="text/plain; charset=utf-8",
)
async def instance_logs(
    request: Request[Any, Any, Any],
    instance_id: FromPath[str],
    tail: Tail = DEFAULT_TAIL,
    since: Since = None,
    follow: Follow = False,
    timestamps: Timestamps = False,
) -> Stream:
    ctx = context_of(request)
    state: InstanceState | None = await read_models.get(ctx.pool, INSTANCES, instance_id)
    if state is None or state.owner_id != request.user.id or state.status in _NO_LOGS:
        raise NotFound("instance not found")
    return await log_stream(request, state.host_id, state.id, tail, since, follow, timestamps)


async def log_stream(
    request: Request[Any, Any, Any],
    host_id: str,
    container_id: str,
    tail: int,
    since: datetime | None,
    follow: bool,
    timestamps: bool,
) -> Stream:
    """The response of a logs route: the container's lines from its host's agent (a followed
    stream counts against the user's open log streams)."""
    reader: LogReader = request.app.state.log_reader
    held = ExitStack()
    if follow:
        limiter: ConnectionLimiter = request.app.state.log_streams
        held.enter_context(limiter.held(request.user.id))
    try:
        chunks = await reader.open(host_id, container_id, tail, since, follow)
    except BaseException:
        held.close()
        raise
    return Stream(
        _body(chunks, timestamps, held),
        media_type="text/plain; charset=utf-8",
        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
    )
