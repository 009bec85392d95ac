"""The one envelope every event travels in, and its wire format (msgspec JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class AggregateRef(msgspec.Struct, frozen=True):
    type: str
    id: str


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event as stored. `sequence` is the stream sequence, known only once read back, so it is
    never written (omit_defaults drops the 0)."""

    id: str
    type: str
    version: int
    aggregate: AggregateRef
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    correlation_id: str
    causation_id: str | None = None
    data: Any
    sequence: int = 0


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


_encoder = msgspec.json.Encoder()
_raw_decoder = msgspec.json.Decoder(RawEnvelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_raw_envelope(payload: bytes) -> RawEnvelope:
    return _raw_decoder.decode(payload)
