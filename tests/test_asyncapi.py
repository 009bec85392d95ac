"""The event catalogue as AsyncAPI 3.0 (`events.asyncapi`, served at /docs/asyncapi.json): every
registered event type is in it, in its aggregate's channel, with its version and a payload schema
that real envelopes of that type satisfy; the document is valid AsyncAPI 3.0 (the `asyncapi3`
object model, plus the references and the operation/channel rules it does not check)."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from typing import Any, get_type_hints

import httpx
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012 as DRAFT_2020_12

from events.asyncapi import document
from events.catalog import EventSpec, specs
from events.container import ContainerConfig
from events.envelope import AggregateRef, Envelope, encode_envelope
from tests.servers import Stack

with warnings.catch_warnings():
    # The package's own models shadow pydantic's `schema` attribute; nothing of ours.
    warnings.simplefilter("ignore", UserWarning)
    from asyncapi3.models.asyncapi import AsyncAPI3

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
DOC = document()
SPECS = specs()


def resolve(pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = DOC
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_registered_event_type_is_a_message_in_its_aggregates_channel() -> None:
    assert len(SPECS) >= 40
    messages = DOC["components"]["messages"]
    schemas = DOC["components"]["schemas"]
    assert set(messages) == set(SPECS)
    for name, spec in SPECS.items():
        channel = DOC["channels"][spec.aggregate]
        assert channel["address"] == f"ev.{spec.aggregate}.{{aggregateId}}.{{eventType}}"
        assert channel["messages"][name] == {"$ref": f"#/components/messages/{name}"}
        assert name in channel["parameters"]["eventType"]["enum"]
        message = messages[name]
        assert message["name"] == name
        assert message["x-event-version"] == spec.version
        assert f"version {spec.version}" in message["title"]
        envelope = resolve(message["payload"]["$ref"])
        own = envelope["allOf"][1]["properties"]
        assert own["type"] == {"const": name}
        assert own["version"] == {"const": spec.version}
        assert own["aggregate"]["properties"]["type"] == {"const": spec.aggregate}
        # The payload's schema is msgspec's, generated from the Struct: every field is there.
        payload = resolve(own["data"]["$ref"])
        assert payload is schemas[name]
        assert set(payload.get("properties", {})) == set(spec.cls.__struct_fields__)
    # The envelope's fields are documented, less the stream sequence (JetStream metadata).
    envelope_fields = set(Envelope.__struct_fields__) - {"sequence"}
    documented = schemas["Envelope"]["properties"]
    assert set(documented) == envelope_fields
    assert all(documented[f].get("description") for f in envelope_fields - {"aggregate"})


def test_the_document_is_valid_asyncapi_3() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    for key in ("channels", "operations"):
        assert DOC[key], key
    assert DOC["components"]["messages"] and DOC["components"]["schemas"]
    # The AsyncAPI 3.0 object model: required fields, types, key patterns, no unknown fields.
    AsyncAPI3.model_validate(DOC)
    # What the object model does not check: every reference resolves inside the document, and an
    # operation's messages are messages of its own channel (the 3.0 specification requires it).
    for ref in refs(DOC):
        resolve(ref)
    for name, operation in DOC["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        channel = resolve(channel_ref)
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), (name, message)
            assert resolve(message["$ref"]) in channel["messages"].values()
    # A JSON document as served (no Python-only values).
    assert json.loads(json.dumps(DOC)) == DOC


def _validator(name: str) -> Draft202012Validator:
    resource = DRAFT_2020_12.create_resource(DOC)
    registry: Registry[Any] = Registry().with_resource("urn:gpuworker:asyncapi", resource)
    schema = {"$ref": f"urn:gpuworker:asyncapi#/components/schemas/{name}_envelope"}
    return Draft202012Validator(schema, registry=registry)


def _from_struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """`st.from_type` of a Struct, except that a field whose default is a factory (`{}`, `[]`) is
    drawn from its type: hypothesis would pass msgspec's factory object itself to the class."""
    hints = get_type_hints(cls)
    drawn = {
        f.name: st.from_type(hints[f.name])
        for f in msgspec.structs.fields(cls)
        if f.default_factory is not msgspec.NODEFAULT
    }
    return st.builds(cls, **drawn)


# The value with such defaults that events embed (`from_type` of an event finds it here).
st.register_type_strategy(ContainerConfig, _from_struct(ContainerConfig))


def _envelopes(spec: EventSpec) -> st.SearchStrategy[bytes]:
    def wrap(data: msgspec.Struct, actor: str, source: str | None) -> bytes:
        return encode_envelope(
            Envelope(
                id="0193a3c2-0000-7000-8000-000000000000",
                type=type(data).__name__,
                version=spec.version,
                aggregate=AggregateRef(spec.aggregate, "a-1"),
                occurred_at=T0,
                recorded_at=T0,
                actor=actor,
                correlation_id="c-1",
                causation_id="k-1",
                data=data,
                source=source,
            )
        )

    return st.builds(
        wrap,
        _from_struct(spec.cls),
        st.sampled_from(["0193a3c2-user", "system:agent:h1"]),
        st.sampled_from([None, "127.0.0.1"]),
    )


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_real_envelopes_of_every_type_satisfy_their_message_schema(data: st.DataObject) -> None:
    for name, spec in SPECS.items():
        payload = json.loads(data.draw(_envelopes(spec), label=name))
        errors = list(_validator(name).iter_errors(payload))
        assert not errors, (name, payload, [e.message for e in errors])
        # And one of another type does not pass for this one.
        other = next(n for n in SPECS if n != name)
        wrong = {**payload, "type": other}
        assert list(_validator(name).iter_errors(wrong)), (name, other)


def test_the_document_is_served_without_authentication(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/docs/asyncapi.json", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(json.dumps(DOC))
