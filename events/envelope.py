"""The one envelope every event travels in, and its wire format (msgspec JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta


def _time(description: str) -> Meta:
    return Meta(description=description, extra_json_schema={"format": "date-time"})


class AggregateRef(msgspec.Struct, frozen=True):
    """Which aggregate (consistency boundary) the event belongs to; its subject is
    `ev.<type>.<id>.<event type>`."""

    type: Annotated[str, Meta(description="Aggregate type: instance, volume, user, …")]
    id: Annotated[str, Meta(description="Aggregate id (a resource id)")]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event as stored. `sequence` is the stream sequence, known only once read back, so it is
    never written (omit_defaults drops the 0). The descriptions are published in the AsyncAPI
    document (`events.asyncapi`) for outside subscribers."""

    id: Annotated[str, Meta(description="Event id (UUIDv7); also the Nats-Msg-Id header")]
    type: Annotated[str, Meta(description="Event type, e.g. InstanceCreated")]
    version: Annotated[int, Meta(description="Version of the payload's shape for this type")]
    aggregate: AggregateRef
    occurred_at: Annotated[
        datetime, _time("When it happened, by the clock of the component that saw it")
    ]
    recorded_at: Annotated[datetime, _time("When the deciders appended it")]
    actor: Annotated[
        str, Meta(description="Who caused it: a user id, or system:<role> (system:agent:<host>)")
    ]
    correlation_id: Annotated[
        str, Meta(description="The request that started it (the api's X-Request-Id, if given)")
    ]
    causation_id: Annotated[str | None, Meta(description="The id of the command that made it")] = (
        None
    )
    data: Annotated[Any, Meta(description="The payload: the event type's own schema")]
    sequence: int = 0
    # The client's network address when a person's request through the api caused the event
    # (None for agents and the system's own processes; absent from events stored before it was).
    source: Annotated[
        str | None,
        Meta(description="The client's address, when a person's request through the api caused it"),
    ] = None


class RawEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope with its payload left undecoded, so the catalogue can upcast it first."""

    id: str
    type: str
    version: int
    aggregate: AggregateRef
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    correlation_id: str
    causation_id: str | None = None
    data: msgspec.Raw
    source: str | None = None


_encoder = msgspec.json.Encoder()
_raw_decoder = msgspec.json.Decoder(RawEnvelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_raw_envelope(payload: bytes) -> RawEnvelope:
    return _raw_decoder.decode(payload)
