"""The event store: JetStream stream EVENTS, one subject per aggregate.

Appends are guarded per aggregate with Nats-Expected-Last-Subject-Sequence(+-Subject), so a writer
that decided on stale state is refused (err_code 10071) and must decide again on fresh state.

A decision's events land all or none: more than one event (on one aggregate or several, such as a
placement's GPU lease and the instance that holds it) goes as one JetStream atomic batch
(`allow_atomic` on the stream; headers Nats-Batch-Id, Nats-Batch-Sequence, Nats-Batch-Commit), with
the expected sequence of each aggregate on its first message. The server checks every expectation
against the stream as it was before the batch and stores the whole batch contiguously, or nothing.

An append whose answer is lost (timeout, broken connection) is not reported as "nothing changed":
the same envelopes (same Nats-Msg-Id) are sent again until the answer is definite. A repeat of a
stored batch is refused as a duplicate; a repeat of a stored single event is refused as stale; in
both cases the store reads the aggregate back and, finding its own event ids, reports success."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig

from events.catalog import decode_event
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.ids import new_id
from events.subjects import STREAM, aggregate_filter, event_subject

log = logging.getLogger("gpuworker.store")

WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE = 10201
_LOAD_BATCH = 1000
# How long an append keeps re-sending before it gives up (then the outcome may be unknown).
APPEND_PATIENCE_S = 4.0


class WrongExpectedSequence(Exception):
    """Someone appended to the aggregate since its state was loaded. Nothing was stored."""


class EventStoreUnavailable(Exception):
    """JetStream did not answer and nothing was stored."""


class AppendOutcomeUnknown(EventStoreUnavailable):
    """JetStream did not answer an append that may have been stored. The events' ids are fixed, so
    sending the same command again settles it (stored events are recognised, never doubled)."""


@dataclass(frozen=True)
class Append:
    """Events for one aggregate, appended only if its last stored sequence is still this one."""

    aggregate: AggregateRef
    events: Sequence[Envelope]
    expected_sequence: int


class EventStore(Protocol):
    async def append(
        self, aggregate: AggregateRef, events: Sequence[Envelope], expected_sequence: int
    ) -> int:
        """Append in order; returns the stream sequence of the last event."""
        ...

    async def append_all(self, writes: Sequence[Append]) -> list[int]:
        """All of `writes` or none, atomically; the last stream sequence of each write."""
        ...

    async def load(self, aggregate: AggregateRef, after: int = 0) -> list[Envelope]:
        """The aggregate's events with stream sequence > after, oldest first."""
        ...


class _Definite(Exception):
    """The server answered an append with an error that says exactly what happened."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(description)
        self.err_code = err_code


class JetStreamEventStore:
    def __init__(
        self,
        nc: NatsClient,
        stream: str = STREAM,
        timeout: float = 5.0,
        patience_s: float = APPEND_PATIENCE_S,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._stream = stream
        self._timeout = timeout
        self._patience = patience_s

    async def ensure_stream(self, replicas: int = 1) -> None:
        config = StreamConfig(
            name=self._stream,
            subjects=["ev.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            allow_direct=True,
            allow_atomic=True,
            duplicate_window=120.0,
        )
        try:
            info = await self._js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
            return
        if not info.config.allow_atomic:  # a stream made before atomic batches: turn them on
            await self._js.update_stream(
                StreamConfig.from_response({**info.config.as_dict(), "allow_atomic": True})
            )

    async def append(
        self, aggregate: AggregateRef, events: Sequence[Envelope], expected_sequence: int
    ) -> int:
        return (await self.append_all([Append(aggregate, events, expected_sequence)]))[0]

    async def append_all(self, writes: Sequence[Append]) -> list[int]:
        writes = [w for w in writes if w.events]
        if not writes:
            return []
        messages = _messages(writes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._patience
        ambiguous = False
        delay = 0.05
        while True:
            try:
                last = await self._publish(messages)
            except _Definite as exc:
                if exc.err_code == BATCH_DUPLICATE or (
                    exc.err_code == WRONG_LAST_SEQUENCE and ambiguous
                ):
                    stored = await self._stored_sequences(writes)
                    if stored is not None:
                        return stored
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise WrongExpectedSequence(str(exc)) from None
                if exc.err_code == BATCH_DUPLICATE:  # a duplicate id, yet not ours: a bug
                    raise EventStoreUnavailable(f"JetStream refused the append: {exc}") from None
                error: Exception = exc
            except nats.errors.NoRespondersError as exc:
                # No stream took the subject (none, or its leader is being elected): the message
                # reached no one, so nothing was stored by this attempt.
                error = exc
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                ambiguous = True
                error = exc
            else:
                return _last_per_write(writes, last)
            if loop.time() + delay > deadline:
                if ambiguous:
                    stored = await self._stored_sequences_or_none(writes)
                    if stored is not None:
                        return stored
                    raise AppendOutcomeUnknown(f"JetStream did not acknowledge: {error!r}")
                raise EventStoreUnavailable(f"JetStream refused the append: {error}")
            log.debug("append not acknowledged (%r); sending it again", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _publish(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """One attempt. Returns the stream sequence of the last message."""
        if len(messages) == 1:
            subject, payload, headers = messages[0]
            return _ack_sequence(
                await self._nc.request(subject, payload, timeout=self._timeout, headers=headers)
            )
        batch_id = new_id()
        for number, (subject, payload, headers) in enumerate(messages, 1):
            batch_headers = {
                **headers,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(number),
            }
            if number < len(messages):
                await self._nc.publish(subject, payload, headers=batch_headers)
            else:
                batch_headers["Nats-Batch-Commit"] = "1"
                reply = await self._nc.request(
                    subject, payload, timeout=self._timeout, headers=batch_headers
                )
                return _ack_sequence(reply)
        raise AssertionError("unreachable")

    async def _stored_sequences_or_none(self, writes: Sequence[Append]) -> list[int] | None:
        try:
            return await self._stored_sequences(writes)
        except EventStoreUnavailable:
            return None

    async def _stored_sequences(self, writes: Sequence[Append]) -> list[int] | None:
        """If this append's events are in the store, the last sequence of each write."""
        found: list[int] = []
        for write in writes:
            ours = {e.id for e in write.events}
            stored = [
                e.sequence
                for e in await self.load(write.aggregate, after=write.expected_sequence)
                if e.id in ours
            ]
            if not stored:
                return None
            found.append(max(stored))
        return found

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


def _messages(writes: Sequence[Append]) -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, payload, headers) for every event, the expectation on each aggregate's first."""
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for write in writes:
        ref = write.aggregate
        for index, event in enumerate(write.events):
            headers = {"Nats-Msg-Id": event.id}
            if index == 0:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(write.expected_sequence)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = aggregate_filter(
                    ref.type, ref.id
                )
            out.append(
                (event_subject(ref.type, ref.id, event.type), encode_envelope(event), headers)
            )
    return out


def _last_per_write(writes: Sequence[Append], last: int) -> list[int]:
    """A batch is stored contiguously and its ack names the last message's sequence."""
    total = sum(len(w.events) for w in writes)
    sequences = []
    end = last - total
    for write in writes:
        end += len(write.events)
        sequences.append(end)
    return sequences


def _ack_sequence(reply: Any) -> int:
    try:
        body = json.loads(reply.data)
    except ValueError as exc:
        raise nats.errors.Error(f"unreadable publish acknowledgement: {reply.data!r}") from exc
    error = body.get("error")
    if error:
        raise _Definite(int(error.get("err_code", 0)), str(error.get("description", error)))
    return int(body["seq"])
