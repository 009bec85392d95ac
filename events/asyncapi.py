"""The event catalogue as an AsyncAPI 3.0 document, for subscribers outside this code base (an audit
or finance team's consumer of the stream).

Generated, never written by hand: one channel per aggregate type (`ev.<aggregate>.{id}.{type}`),
one message per registered event type (`events.catalog`) with its current version and the JSON
Schema msgspec derives from its Struct, all inside the one envelope (`events.envelope`). A new event
type or field therefore appears here the moment it is registered."""

from __future__ import annotations

import inspect
from collections import defaultdict
from importlib import metadata
from typing import Any

import msgspec

import events  # noqa: F401  (registers every event type)
from events.catalog import EventSpec, specs
from events.envelope import Envelope
from events.subjects import EVENTS_ROOT, STREAM

ASYNCAPI_VERSION = "3.0.0"
_SCHEMAS = "#/components/schemas/"

DESCRIPTION = f"""Every change in GPUWorker is an event appended to the JetStream stream `{STREAM}`
(file storage, never rewritten). Subscribe with a JetStream consumer on the stream, filtered by
the subjects of the channels you need (`{EVENTS_ROOT}.instance.>` for every instance event,
`{EVENTS_ROOT}.>` for all), from a stream sequence you keep: the sequence is the message's
JetStream metadata, not a payload field, and orders events across aggregates.

Each message is one JSON envelope: who (`actor`), what (`type`, `version`, `data`), which resource
(`aggregate`), when (`occurred_at`, `recorded_at`), why (`correlation_id`, `causation_id`) and from
where (`source`, for actions requested through the api). The NATS header `Nats-Msg-Id` is the
event id. A dot in an aggregate id becomes `~` in its subject token.

Versions: an event type's payload changes only by a new version. Stored events keep the version they
were written with; this catalogue gives the current shape, and GPUWorker's own readers upcast older
ones. No secret is ever in an event in the clear (registry passwords travel as ciphertext)."""


def _version() -> str:
    try:
        return metadata.version("gpuworker")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _doc(cls: type[Any]) -> str | None:
    doc = inspect.getdoc(cls)
    # A Struct without a docstring inherits msgspec's own: not ours to publish.
    return doc if doc and cls.__doc__ else None


def _envelope_schema(schemas: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schemas[Envelope.__name__])
    properties = dict(schema["properties"])
    # Known only once read back (the JetStream sequence); never in the payload.
    properties.pop("sequence", None)
    schema["properties"] = properties
    schema["description"] = (
        "The envelope every event travels in; `data` is the event type's own payload."
    )
    return schema


def _message(name: str, spec: EventSpec) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": f"{name} (version {spec.version})",
        "summary": f"{name}, an event of the {spec.aggregate} aggregate.",
        "contentType": "application/json",
        "correlationId": {
            "description": "The request that started it",
            "location": "$message.payload#/correlation_id",
        },
        "headers": {
            "type": "object",
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "description": "The event id: JetStream keeps one copy of a retried append",
                }
            },
        },
        "payload": {"$ref": f"{_SCHEMAS}{name}_envelope"},
        "x-event-version": spec.version,
    }
    doc = _doc(spec.cls)
    if doc:
        message["description"] = doc
    return message


def _channel(aggregate: str, names: list[str]) -> dict[str, Any]:
    return {
        "address": f"{EVENTS_ROOT}.{aggregate}.{{aggregateId}}.{{eventType}}",
        "title": f"{aggregate} events",
        "description": (
            f"Everything that happens to one {aggregate}, in order, on its own subject;"
            f" subscribe to `{EVENTS_ROOT}.{aggregate}.>` for every {aggregate}."
        ),
        "parameters": {
            "aggregateId": {"description": f"The {aggregate}'s id ('.' written as '~')"},
            "eventType": {"enum": names, "description": "The event type: the message's name"},
        },
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every registered event type."""
    registered = dict(sorted(specs().items()))
    by_aggregate: dict[str, list[str]] = defaultdict(list)
    for name, spec in registered.items():
        by_aggregate[spec.aggregate].append(name)
    _, schemas = msgspec.json.schema_components(
        [Envelope, *(spec.cls for spec in registered.values())],
        ref_template=_SCHEMAS + "{name}",
    )
    schemas[Envelope.__name__] = _envelope_schema(schemas)
    for name, spec in registered.items():
        schemas[f"{name}_envelope"] = {
            "allOf": [
                {"$ref": f"{_SCHEMAS}{Envelope.__name__}"},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": name},
                        "version": {"const": spec.version},
                        "aggregate": {
                            "type": "object",
                            "properties": {"type": {"const": spec.aggregate}},
                        },
                        "data": {"$ref": f"{_SCHEMAS}{name}"},
                    },
                },
            ]
        }
    channels = {a: _channel(a, names) for a, names in sorted(by_aggregate.items())}
    operations = {
        f"receive_{aggregate}_events": {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{aggregate}"},
            "summary": f"Subscribe to {aggregate} events",
            "messages": [{"$ref": f"#/channels/{aggregate}/messages/{n}"} for n in names],
        }
        for aggregate, names in sorted(by_aggregate.items())
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "GPUWorker events",
            "version": _version(),
            "description": DESCRIPTION,
        },
        "servers": {
            "jetstream": {
                "host": "{natsHost}",
                "protocol": "nats",
                "description": (
                    f"Your deployment's NATS; the stream `{STREAM}` holds every event. A login is"
                    " required: each subscriber gets its own user with read-only permissions."
                ),
                "variables": {
                    "natsHost": {"default": "localhost:4222", "description": "host:port"}
                },
            }
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {name: _message(name, spec) for name, spec in registered.items()},
            "schemas": dict(sorted(schemas.items())),
        },
    }
