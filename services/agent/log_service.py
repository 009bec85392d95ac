"""The agent's side of container logs (the protocol is in services/container_logs.py): answers the
api's requests for the containers of instances on this agent's hosts, from the runtime.

Which container is never the caller's to say: a request names an instance (or a serverless
worker), and the agent serves it only when that instance is on the host whose subject the request
came on (and not terminated), or that worker lives there; the runtime finds the container by the
name it gave it. Owner checks are the api's (it knows who
asks); this side only makes sure a request cannot reach another host's or nobody's container."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.agent.runtime import ContainerNotFound, LogLine, Runtime
from services.container_logs import (
    ACK_TIMEOUT_S,
    BYTES_PER_S,
    CHUNK_BYTES,
    CHUNK_LINES,
    IDLE_BEAT_S,
    LINES_PER_S,
    MAX_TAIL,
    LogAnswer,
    LogChunk,
    LogEntry,
    LogRequest,
    clipped,
    log_request_subject,
    log_stream_subject,
)
from services.errors import BadRequest, GpuWorkerError, NotFound, TooManyRequests

log = logging.getLogger("gpuworker.agent.logs")

# Streams one agent serves at once (each holds a Docker logs connection and a thread).
MAX_STREAMS = 64
# Lines are gathered this long before a chunk goes out (unless it is full first).
FLUSH_S = 0.05
_DONE = object()


class _Pace:
    """A token bucket over lines and bytes: at most one second's worth in a burst."""

    def __init__(self, lines_per_s: float, bytes_per_s: float) -> None:
        self._rates = (lines_per_s, bytes_per_s)
        self._tokens = [lines_per_s, bytes_per_s]
        self._at = time.monotonic()

    async def take(self, lines: int, size: int) -> None:
        now = time.monotonic()
        for i, rate in enumerate(self._rates):
            self._tokens[i] = min(rate, self._tokens[i] + (now - self._at) * rate)
        self._at = now
        self._tokens[0] -= lines
        self._tokens[1] -= size
        wait = max(-self._tokens[0] / self._rates[0], -self._tokens[1] / self._rates[1], 0.0)
        if wait > 0:
            await asyncio.sleep(wait)


class ContainerLogService:
    def __init__(
        self,
        nc: NatsClient,
        host_ids: list[str],
        runtime: Runtime,
        # The host a live container of this agent's runs on, by its id (an instance that is not
        # terminated, or a serverless worker); None for any other id.
        host_of: Callable[[str], str | None],
        max_streams: int = MAX_STREAMS,
        idle_beat_s: float = IDLE_BEAT_S,
    ) -> None:
        self._nc = nc
        self._host_ids = host_ids
        self._runtime = runtime
        self._host_of = host_of
        self._max_streams = max_streams
        self._idle_beat_s = idle_beat_s
        self._subscriptions: list[Subscription] = []
        self._streams: set[asyncio.Task[None]] = set()
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(LogRequest).decode

    async def start(self) -> None:
        for host_id in self._host_ids:
            subject = log_request_subject(host_id)

            async def on_request(msg: Msg, host_id: str = host_id) -> None:
                await self._answer(msg, host_id)

            self._subscriptions.append(await self._nc.subscribe(subject, cb=on_request))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            # Gone already when the connection closed first: nothing to undo.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)

    async def _answer(self, msg: Msg, host_id: str) -> None:
        try:
            request = self._checked(msg.data, host_id)
        except GpuWorkerError as exc:
            await msg.respond(self._encode(LogAnswer(error=exc.body())))
            return
        await msg.respond(self._encode(LogAnswer()))
        task = asyncio.create_task(self._serve(request))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    def _checked(self, data: bytes, host_id: str) -> LogRequest:
        try:
            request = self._decode(data)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"not a log request: {exc}") from None
        if self._host_of(request.instance_id) != host_id:
            raise NotFound("instance not found")
        stream_id = request.stream.rpartition(".")[2]
        try:
            expected = log_stream_subject(host_id, stream_id)
        except ValueError:
            expected = ""
        if request.stream != expected:
            raise BadRequest(f"a log stream of host {host_id} is logs.out.{host_id}.<id>")
        if not 0 <= request.tail <= MAX_TAIL:
            raise BadRequest(f"field `tail`: 0 to {MAX_TAIL} lines")
        if len(self._streams) >= self._max_streams:
            raise TooManyRequests(
                f"this host serves {self._max_streams} log streams at once already; retry shortly"
            )
        return request

    async def _serve(self, request: LogRequest) -> None:
        lines = self._runtime.logs(
            request.instance_id, tail=request.tail, since=request.since, follow=request.follow
        )
        try:
            reason = await self._relay(request, lines)
        except ContainerNotFound:
            reason = "the instance has no container yet: it has not started on its host"
        except Exception as exc:
            log.warning("log stream of instance %s failed: %s", request.instance_id, exc)
            reason = "the host could not read the container's logs"
        finally:
            await lines.aclose()
        if reason != "gone":
            await self._send(request.stream, LogChunk(end=True, reason=reason))

    async def _relay(self, request: LogRequest, lines: AsyncGenerator[LogLine, None]) -> str | None:
        """Sends what `lines` yields in paced chunks; the reason it stopped ("gone": the reader
        left; None: everything was sent)."""
        pace = _Pace(LINES_PER_S, BYTES_PER_S)
        batch: list[LogEntry] = []
        size = 0
        pending: asyncio.Future[object] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(lines, _DONE))
                done, _ = await asyncio.wait(
                    {pending}, timeout=FLUSH_S if batch else self._idle_beat_s
                )
                if not done:
                    # Quiet: send what there is, or (following) a beat to see the reader is there.
                    await pace.take(len(batch), size)
                    if not await self._send(request.stream, LogChunk(lines=batch)):
                        return "gone"
                    batch, size = [], 0
                    continue
                item, pending = pending.result(), None
                if item is _DONE:
                    break
                assert isinstance(item, LogLine)
                text = clipped(item.text)
                batch.append(LogEntry(item.at, text))
                size += len(text) + 40
                if size >= CHUNK_BYTES or len(batch) >= CHUNK_LINES:
                    await pace.take(len(batch), size)
                    if not await self._send(request.stream, LogChunk(lines=batch)):
                        return "gone"
                    batch, size = [], 0
            if batch and not await self._send(request.stream, LogChunk(lines=batch)):
                return "gone"
            return None
        finally:
            if pending is not None:
                # Settled before the generator is closed (it cannot close while it runs).
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _send(self, stream: str, chunk: LogChunk) -> bool:
        """Whether the reader took it (False: it has gone, or stopped taking)."""
        try:
            await self._nc.request(stream, self._encode(chunk), timeout=ACK_TIMEOUT_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return False
        except nats.errors.Error as exc:
            log.debug("log chunk not sent: %s", exc)
            return False
        return True
