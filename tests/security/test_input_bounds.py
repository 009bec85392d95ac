"""Finding 11: every string, list and map a request body may hold is bounded, and so is the whole.

Unbounded fields let one template weigh about 920 kB, and every list that showed it grew with it.
The check walks the msgspec schema of every route's body, so a new route is covered too."""

from __future__ import annotations

import re._parser as sre_parse  # type: ignore[import-not-found]  # no stub; the regex parser
import warnings
from typing import Any

import msgspec
import pytest

from services.api.app import create_app
from services.config import Settings

# Well under the 1 MiB body limit: the largest template (readme, env) is about a third of a MiB.
LARGEST_BODY = 512 * 1024
# JSON punctuation around a value or a key: quotes, colon, comma.
OVERHEAD = 4


def _body_types() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(Settings("postgresql://x", "nats://x", "x" * 44, "x" * 44))
    found = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                found[f"{sorted(handler.http_methods)[0]} {route.path}"] = data.annotation
    return found


def _largest(schema: dict[str, Any], defs: dict[str, Any], where: str) -> int:
    """The most characters a value of `schema` can take; fails on anything unbounded."""
    if "$ref" in schema:
        return _largest(defs[schema["$ref"].rsplit("/", 1)[1]], defs, where)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return max(_largest(s, defs, where) for s in schema[combinator])
    if "enum" in schema:
        return max(len(str(v)) for v in schema["enum"]) + OVERHEAD
    # msgspec leaves out the type of a map's keys (propertyNames): they are strings.
    kind = schema.get("type", "string" if {"maxLength", "pattern"} & set(schema) else None)
    if kind == "string":
        bound = schema.get("maxLength")
        if bound is None and "pattern" in schema:
            # A pattern bounds a string only when it is anchored and its width is finite.
            width = sre_parse.parse(schema["pattern"]).getwidth()[1]
            if schema["pattern"].startswith("^") and width < sre_parse.MAXREPEAT:
                bound = width
        assert bound is not None, f"{where}: a string without maxLength"
        return int(bound) + OVERHEAD
    if kind in ("integer", "number", "boolean", "null"):
        return 24
    if kind == "array":
        assert "maxItems" in schema, f"{where}: a list without maxItems"
        return int(schema["maxItems"]) * (_largest(schema["items"], defs, f"{where}[]") + 1)
    if kind == "object":
        total = 2
        for name, field in schema.get("properties", {}).items():
            total += len(name) + OVERHEAD + _largest(field, defs, f"{where}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            assert "maxProperties" in schema, f"{where}: a map without maxProperties"
            key = _largest(schema.get("propertyNames", {"type": "string"}), defs, f"{where} key")
            total += int(schema["maxProperties"]) * (key + _largest(extra, defs, f"{where}{{}}"))
        return total
    raise AssertionError(f"{where}: unexpected schema {schema}")


BODIES = _body_types()


def test_every_route_with_a_body_is_checked() -> None:
    assert {"POST /templates", "PATCH /instances/{instance_id:str}", "POST /auth/signup"} <= set(
        BODIES
    ), BODIES


@pytest.mark.parametrize("route", sorted(BODIES))
def test_every_field_is_bounded_and_so_is_the_body(route: str) -> None:
    (schema,), defs = msgspec.json.schema_components([BODIES[route]])
    largest = _largest(schema, defs, route)
    assert largest <= LARGEST_BODY, f"{route}: a body may hold {largest} characters"
