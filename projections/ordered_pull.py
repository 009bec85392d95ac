"""Read one subject filter of the stream in stream order, from a given sequence, with no acks.

Why not a durable consumer with acks: an ack acknowledges a delivery, not an application. With
AckPolicy.ALL, one replica's ack covered batches that another replica (or a dead process) fetched
and never applied, and a redelivery that arrived after later events was then skipped by a
"sequence <= checkpoint" test. Here the reader's own store (the PostgreSQL checkpoint) is the
only cursor: every (re)start reads it and asks JetStream for an ephemeral, ack-less consumer that
starts right after it. Such a consumer delivers in stream order and numbers its deliveries
1, 2, 3, …; a missing number (a pull answer lost in a reconnect) raises `Gap`, and the caller
starts again from what it really applied. Nothing is ever skipped, whatever crashes where.

Pulls are raw requests into a plain callback (no Task per message), one request outstanding at a
time, each ending at `batch` messages or at `expires`; idle heartbeats tell a dead server from a
quiet stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.delivery import consumer_sequence, pending
from events.ids import new_id
from events.subjects import STREAM

log = logging.getLogger("gpuworker.pull")

_NS = 1_000_000_000


class Gap(Exception):
    """A delivery is missing or the consumer went away: restart from the last applied event."""


class OrderedPull:
    def __init__(
        self,
        nc: NatsClient,
        filter_subjects: list[str],
        start_sequence: int,
        *,
        stream: str = STREAM,
        batch: int = 500,
        expires_s: float = 5.0,
        heartbeat_s: float = 1.0,
        name: str | None = None,
        last_per_subject: bool = False,
    ) -> None:
        """`name` fixes the consumer's name (a NATS permission can then name it); a consumer of
        that name left by an earlier reader is replaced. `last_per_subject` delivers each
        subject's last message instead of everything from `start_sequence`."""
        self._nc = nc
        self._js = nc.jetstream(timeout=5)
        self._stream = stream
        self._filters = filter_subjects
        self._start = max(1, start_sequence)
        self._batch = batch
        self._expires_s = expires_s
        self._heartbeat_s = heartbeat_s
        self._name = name or f"ordered_{new_id().replace('-', '')}"
        self._fixed_name = name is not None
        self._last_per_subject = last_per_subject
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._buffer: list[Msg] = []
        self._ready = asyncio.Event()
        self._error: Exception | None = None
        self._requested = 0
        self._request_open = False
        self._next_delivery = 1
        self._last_sign_of_life = 0.0
        # What the last delivered message said was left after it (for lag reports).
        self.pending = 0

    @property
    def name(self) -> str:
        return self._name

    async def open(self) -> None:
        if self._fixed_name:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_consumer(self._stream, self._name)
        deliver = (
            {"deliver_policy": DeliverPolicy.LAST_PER_SUBJECT}
            if self._last_per_subject
            else {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._start}
        )
        info = await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                name=self._name,
                # One subject as `filter_subject`: servers before 2.10 know no other form.
                filter_subject=self._filters[0] if len(self._filters) == 1 else None,
                filter_subjects=self._filters if len(self._filters) > 1 else None,
                **deliver,
                ack_policy=AckPolicy.NONE,
                # The server forgets it soon after this reader dies.
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        self.pending = info.num_pending or 0
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        await self._request()

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe failed: %s", exc)
            self._sub = None
        try:
            await self._js.delete_consumer(self._stream, self._name)
        except Exception as exc:  # it expires on its own
            log.debug("could not delete consumer %s: %s", self._name, exc)

    async def next(self, timeout: float) -> list[Msg]:
        """The messages delivered since the last call (in order, possibly none after `timeout`).
        Raises Gap when the sequence of deliveries broke or the server went silent."""
        if not self._buffer and self._error is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self._error is not None:
            raise self._error
        silent = asyncio.get_running_loop().time() - self._last_sign_of_life
        if not self._buffer and self._request_open and silent > 3 * self._heartbeat_s + 1:
            raise Gap("no message and no heartbeat from the server: the pull is dead")
        taken, self._buffer = self._buffer, []
        self._ready.clear()
        if not self._request_open and self._sub is not None:
            await self._request()
        return taken

    async def _request(self) -> None:
        self._requested = self._batch
        self._request_open = True
        self._last_sign_of_life = asyncio.get_running_loop().time()
        request = {
            "batch": self._batch,
            "expires": int(self._expires_s * _NS),
            "idle_heartbeat": int(self._heartbeat_s * _NS),
        }
        await self._nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._name}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._ready.set()

    async def _on_message(self, msg: Msg) -> None:
        self._last_sign_of_life = asyncio.get_running_loop().time()
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is not None:
            if status == "100":  # idle heartbeat: alive, nothing new
                return
            if status in ("408", "404"):  # the request expired: ask again
                self._request_open = False
                if not self._buffer:
                    await self._request()
                return
            description = (msg.headers or {}).get("Description", "")
            self._fail(Gap(f"pull ended with status {status} {description}".strip()))
            return
        delivery = consumer_sequence(msg)
        if delivery != self._next_delivery:
            self._fail(Gap(f"delivery {delivery} arrived where {self._next_delivery} was due"))
            return
        self._next_delivery += 1
        self.pending = pending(msg)
        self._buffer.append(msg)
        self._requested -= 1
        if self._requested <= 0:
            self._request_open = False
        self._ready.set()
