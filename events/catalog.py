"""Every event type, its current version, and the upcasters that lift old versions on read.

Stored events are never rewritten: an event written as version 1 stays version 1 in JetStream and is
lifted to the current shape each time it is read (`upcast_vN_vN+1` chain, as in eventsourcing)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from events.envelope import Envelope, RawEnvelope, decode_raw_envelope

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownEventType(Exception):
    pass


@dataclass(frozen=True)
class EventSpec:
    cls: type[msgspec.Struct]
    version: int
    # The aggregate type whose subjects (`ev.<aggregate>.<id>.<type>`) carry this event.
    aggregate: str
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    @functools.cached_property
    def _decoder(self) -> msgspec.json.Decoder[Any]:
        # One decoder per type, made once: a rebuild decodes hundreds of thousands of events.
        return msgspec.json.Decoder(self.cls)

    def decode(self, raw: RawEnvelope) -> Any:
        if raw.version == self.version:
            return self._decoder.decode(raw.data)
        payload: dict[str, Any] = msgspec.json.decode(raw.data)
        for version in range(raw.version, self.version):
            payload = self.upcasters[version](payload)
        return msgspec.convert(payload, self.cls)


_SPECS: dict[str, EventSpec] = {}

Register = Callable[..., Callable[[type[msgspec.Struct]], type[msgspec.Struct]]]


def registrar(aggregate: str) -> Register:
    """The `register` decorator of one aggregate type's events (each events module makes its own:
    `register = registrar("instance")`), so that every event type says where it is published."""

    def register(
        version: int = 1, upcasters: dict[int, Upcaster] | None = None
    ) -> Callable[[type[msgspec.Struct]], type[msgspec.Struct]]:
        """Class decorator: the event's type name is its class name."""

        def add(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
            missing = [v for v in range(1, version) if v not in (upcasters or {})]
            if missing:
                raise ValueError(f"{cls.__name__} v{version} lacks upcasters from {missing}")
            _SPECS[cls.__name__] = EventSpec(cls, version, aggregate, dict(upcasters or {}))
            return cls

        return add

    return register


def specs() -> dict[str, EventSpec]:
    """Every registered event type, by name (import `events` first to register them all)."""
    return dict(_SPECS)


def spec_for(event_type: str) -> EventSpec:
    try:
        return _SPECS[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None


def version_of(data: msgspec.Struct) -> int:
    return spec_for(type(data).__name__).version


def decode_event(payload: bytes, sequence: int = 0) -> Envelope:
    raw = decode_raw_envelope(payload)
    spec = spec_for(raw.type)
    data = spec.decode(raw)
    return Envelope(
        id=raw.id,
        type=raw.type,
        version=spec.version,
        aggregate=raw.aggregate,
        occurred_at=raw.occurred_at,
        recorded_at=raw.recorded_at,
        actor=raw.actor,
        correlation_id=raw.correlation_id,
        causation_id=raw.causation_id,
        data=data,
        sequence=sequence,
        source=raw.source,
    )
