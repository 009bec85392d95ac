"""The event store: JetStream stream EVENTS, one subject per aggregate.

Appends are guarded per aggregate with Nats-Expected-Last-Subject-Sequence(+-Subject), so a writer
that decided on stale state is refused (err_code 10071) and must decide again on fresh state.
Nats-Msg-Id = event id makes a re-sent append a no-op within the duplicate window."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig

from events.catalog import decode_event
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.subjects import STREAM, aggregate_filter, event_subject

WRONG_LAST_SEQUENCE = 10071
_LOAD_BATCH = 1000


class WrongExpectedSequence(Exception):
    """Someone appended to the aggregate since its state was loaded."""


class EventStoreUnavailable(Exception):
    """JetStream did not answer; nothing was acknowledged."""


class EventStore(Protocol):
    async def append(
        self, aggregate: AggregateRef, events: Sequence[Envelope], expected_sequence: int
    ) -> int:
        """Append in order; returns the stream sequence of the last event."""
        ...

    async def load(self, aggregate: AggregateRef, after: int = 0) -> list[Envelope]:
        """The aggregate's events with stream sequence > after, oldest first."""
        ...


class JetStreamEventStore:
    def __init__(self, nc: NatsClient, stream: str = STREAM, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._stream = stream
        self._timeout = timeout

    async def ensure_stream(self, replicas: int = 1) -> None:
        config = StreamConfig(
            name=self._stream,
            subjects=["ev.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            allow_direct=True,
            duplicate_window=120.0,
        )
        try:
            await self._js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)

    async def append(
        self, aggregate: AggregateRef, events: Sequence[Envelope], expected_sequence: int
    ) -> int:
        last = expected_sequence
        filter_subject = aggregate_filter(aggregate.type, aggregate.id)
        for event in events:
            headers = {
                "Nats-Msg-Id": event.id,
                "Nats-Expected-Last-Subject-Sequence": str(last),
                "Nats-Expected-Last-Subject-Sequence-Subject": filter_subject,
            }
            subject = event_subject(aggregate.type, aggregate.id, event.type)
            try:
                ack = await self._js.publish(
                    subject, encode_envelope(event), headers=headers, timeout=self._timeout
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise WrongExpectedSequence(str(exc.description)) from None
                raise EventStoreUnavailable(f"JetStream refused the append: {exc}") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventStoreUnavailable(f"JetStream did not acknowledge: {exc!r}") from exc
            last = ack.seq
        return last

    async def load(self, aggregate: AggregateRef, after: int = 0) -> list[Envelope]:
        """Batched direct get (one round trip per 1,000 events) of the aggregate's subjects."""
        filter_subject = aggregate_filter(aggregate.type, aggregate.id)
        events: list[Envelope] = []
        next_seq = after + 1
        while True:
            batch, pending = await self._direct_batch(filter_subject, next_seq)
            events.extend(batch)
            if not batch or pending == 0:
                return events
            next_seq = batch[-1].sequence + 1

    async def _direct_batch(self, filter_subject: str, start: int) -> tuple[list[Envelope], int]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        request = {"seq": start, "next_by_subj": filter_subject, "batch": _LOAD_BATCH}
        out: list[Envelope] = []
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._stream}", json.dumps(request).encode(), reply=inbox
            )
            while True:
                msg = await sub.next_msg(timeout=self._timeout)
                headers: dict[str, Any] = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return out, 0
                if status == "204":
                    return out, int(headers.get("Nats-Num-Pending", "0"))
                if status is not None:
                    raise EventStoreUnavailable(f"direct get answered {status}")
                out.append(decode_event(msg.data, int(headers["Nats-Sequence"])))
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreUnavailable(f"JetStream did not answer a load: {exc!r}") from exc
        finally:
            await sub.unsubscribe()
